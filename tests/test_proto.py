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
    complete = service.methods_by_name["Complete"]
    assert complete.input_type.full_name == "qac.v1.CompleteRequest"
    assert complete.output_type.full_name == "qac.v1.CompleteResponse"
    assert not complete.client_streaming and not complete.server_streaming


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
    }
    assert shape(qac_service_pb2.Completion) == {
        "text": (1, FD.TYPE_STRING, False),
        "score": (2, FD.TYPE_FLOAT, False),
        "source": (3, FD.TYPE_STRING, False),
    }
    assert shape(qac_service_pb2.CompleteResponse) == {
        "completions": (1, FD.TYPE_MESSAGE, True),
        "model_version": (2, FD.TYPE_STRING, False),
    }


def _twin_shape(message_descriptor):
    """Field name -> (number, type, repeated), with string mapped to bytes and messages by shape."""
    out = {}
    for f in message_descriptor.fields:
        ftype = FD.TYPE_BYTES if f.type == FD.TYPE_STRING else f.type
        sub = _twin_shape(f.message_type) if f.message_type and f.message_type.name != "Timestamp" else None
        out[f.name] = (f.number, ftype, f.is_repeated, sub)
    return out


def test_lenient_twin_has_same_wire_layout():
    # The UTF-8 diagnosis re-parses the same bytes as the twin; any drift would misname fields.
    assert _twin_shape(qac_service_pb2.CompleteRequest.DESCRIPTOR) == _twin_shape(
        internal_raw_pb2.RawCompleteRequest.DESCRIPTOR
    )
    assert all(f.type != FD.TYPE_STRING for f in internal_raw_pb2.RawSession.DESCRIPTOR.fields)


def test_every_rpc_has_a_handler():
    service = qac_service_pb2.DESCRIPTOR.services_by_name["QueryService"]
    handlers = rpc_method_handlers(QueryServiceServicer())
    assert set(handlers) == {m.name for m in service.methods}
