"""The service contract: generated code is current, importable by package path, and consistent."""
from __future__ import annotations

from google.protobuf import descriptor

from serving import gen_proto
from serving.pb.qac.v1 import internal_raw_pb2, qac_service_pb2, qac_service_pb2_grpc
from serving.servicer import SERVICE_NAME, QueryServiceServicer, rpc_method_handlers

FD = descriptor.FieldDescriptor


def test_generated_code_matches_proto_files():
    assert gen_proto.check() == []


def test_grpc_module_imports_messages_by_package_path():
    source = gen_proto.REPO_ROOT / gen_proto.OUT_DIR / "qac_service_pb2_grpc.py"
    assert "from serving.pb.qac.v1 import qac_service_pb2" in source.read_text()
    assert qac_service_pb2_grpc.QueryServiceStub is not None


def test_service_contract():
    service = qac_service_pb2.DESCRIPTOR.services_by_name["QueryService"]
    assert service.full_name == "qac.v1.QueryService" == SERVICE_NAME
    assert {m.name for m in service.methods} == {"Complete", "Search", "Feedback"}
    for name in ("Complete", "Search", "Feedback"):
        method = service.methods_by_name[name]
        assert method.input_type.full_name == f"qac.v1.{name}Request"
        assert method.output_type.full_name == f"qac.v1.{name}Response"
        assert not method.client_streaming and not method.server_streaming


def test_message_fields():
    def shape(message):
        return {f.name: (f.number, f.type, f.is_repeated) for f in message.DESCRIPTOR.fields}

    assert shape(qac_service_pb2.Session) == {
        "session_id": (1, FD.TYPE_STRING, False),
        "user_id": (2, FD.TYPE_STRING, False),
        "previous_queries": (3, FD.TYPE_STRING, True),
        "timestamp": (4, FD.TYPE_MESSAGE, False),
    }
    assert shape(qac_service_pb2.CompleteRequest) == {
        "session": (1, FD.TYPE_MESSAGE, False),
        "prefix": (2, FD.TYPE_STRING, False),
        "k": (3, FD.TYPE_INT32, False),
        "preview_k": (4, FD.TYPE_INT32, False),
        "preview_completions": (5, FD.TYPE_INT32, False),
        "catalog": (6, FD.TYPE_STRING, False),
    }
    assert shape(qac_service_pb2.Completion) == {
        "text": (1, FD.TYPE_STRING, False),
        "score": (2, FD.TYPE_FLOAT, False),
        "source": (3, FD.TYPE_STRING, False),
        "preview": (4, FD.TYPE_MESSAGE, True),
        "preview_decision_id": (5, FD.TYPE_STRING, False),
        "highlight_start": (6, FD.TYPE_INT32, False),
        "highlight_end": (7, FD.TYPE_INT32, False),
    }
    assert shape(qac_service_pb2.CompleteResponse) == {
        "completions": (1, FD.TYPE_MESSAGE, True),
        "model_version": (2, FD.TYPE_STRING, False),
        "decision_id": (3, FD.TYPE_STRING, False),
    }
    assert shape(qac_service_pb2.SearchRequest) == {
        "session": (1, FD.TYPE_MESSAGE, False),
        "query": (2, FD.TYPE_STRING, False),
        "k": (3, FD.TYPE_INT32, False),
        "catalog": (4, FD.TYPE_STRING, False),
    }
    assert shape(qac_service_pb2.SearchItem) == {
        "item_id": (1, FD.TYPE_STRING, False),
        "text": (2, FD.TYPE_STRING, False),
        "score": (3, FD.TYPE_FLOAT, False),
        "arms": (4, FD.TYPE_STRING, True),
    }
    assert shape(qac_service_pb2.SearchResponse) == {
        "items": (1, FD.TYPE_MESSAGE, True),
        "decision_id": (2, FD.TYPE_STRING, False),
        "model_version": (3, FD.TYPE_STRING, False),
    }
    assert shape(qac_service_pb2.FeedbackRequest) == {
        "decision_id": (1, FD.TYPE_STRING, False),
        "clicked_item_id": (2, FD.TYPE_STRING, False),
        "accepted_suggestion": (3, FD.TYPE_STRING, False),
        "position": (4, FD.TYPE_INT32, False),
        "timestamp": (5, FD.TYPE_MESSAGE, False),
        "issued_query": (6, FD.TYPE_STRING, False),
    }
    assert [f.name for f in qac_service_pb2.FeedbackRequest.DESCRIPTOR.oneofs_by_name["action"].fields] == [
        "clicked_item_id", "accepted_suggestion", "issued_query",
    ]
    assert shape(qac_service_pb2.FeedbackResponse) == {
        "duplicate": (1, FD.TYPE_BOOL, False),
        "reward": (2, FD.TYPE_FLOAT, False),
    }
    assert qac_service_pb2.Completion.DESCRIPTOR.fields_by_name["preview"].message_type.full_name == (
        "qac.v1.SearchItem"
    )


def _twin_shape(message_descriptor):
    """Field name -> (number, type, repeated, oneof, sub-shape), with string mapped to bytes and
    messages by shape."""
    out = {}
    for f in message_descriptor.fields:
        ftype = FD.TYPE_BYTES if f.type == FD.TYPE_STRING else f.type
        sub = _twin_shape(f.message_type) if f.message_type and f.message_type.name != "Timestamp" else None
        oneof = f.containing_oneof.name if f.containing_oneof else None
        out[f.name] = (f.number, ftype, f.is_repeated, oneof, sub)
    return out


# Every request message the server decodes leniently, with its byte-level twin.
LENIENT_TWINS = [
    (qac_service_pb2.CompleteRequest, internal_raw_pb2.RawCompleteRequest),
    (qac_service_pb2.SearchRequest, internal_raw_pb2.RawSearchRequest),
    (qac_service_pb2.FeedbackRequest, internal_raw_pb2.RawFeedbackRequest),
]


def test_lenient_twin_has_same_wire_layout():
    # The UTF-8 diagnosis re-parses the same bytes as the twin; any drift would misname fields.
    for strict, raw in LENIENT_TWINS:
        assert _twin_shape(strict.DESCRIPTOR) == _twin_shape(raw.DESCRIPTOR), strict.DESCRIPTOR.name
    for message in internal_raw_pb2.DESCRIPTOR.message_types_by_name.values():
        assert all(f.type != FD.TYPE_STRING for f in message.fields), message.name


def test_every_request_type_has_a_lenient_twin():
    service = qac_service_pb2.DESCRIPTOR.services_by_name["QueryService"]
    assert {m.input_type.name for m in service.methods} == {s.DESCRIPTOR.name for s, _ in LENIENT_TWINS}


def test_every_rpc_has_a_handler():
    service = qac_service_pb2.DESCRIPTOR.services_by_name["QueryService"]
    handlers = rpc_method_handlers(QueryServiceServicer())
    assert set(handlers) == {m.name for m in service.methods}
