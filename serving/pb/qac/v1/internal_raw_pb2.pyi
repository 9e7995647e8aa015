import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawSession(_message.Message):
    __slots__ = ("session_id", "user_id", "previous_queries", "timestamp")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_QUERIES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    user_id: bytes
    previous_queries: _containers.RepeatedScalarFieldContainer[bytes]
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[bytes] = ..., user_id: _Optional[bytes] = ..., previous_queries: _Optional[_Iterable[bytes]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RawCompleteRequest(_message.Message):
    __slots__ = ("session", "prefix", "k", "preview_k", "preview_completions", "catalog")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_K_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    session: RawSession
    prefix: bytes
    k: int
    preview_k: int
    preview_completions: int
    catalog: bytes
    def __init__(self, session: _Optional[_Union[RawSession, _Mapping]] = ..., prefix: _Optional[bytes] = ..., k: _Optional[int] = ..., preview_k: _Optional[int] = ..., preview_completions: _Optional[int] = ..., catalog: _Optional[bytes] = ...) -> None: ...

class RawSearchRequest(_message.Message):
    __slots__ = ("session", "query", "k", "catalog")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    session: RawSession
    query: bytes
    k: int
    catalog: bytes
    def __init__(self, session: _Optional[_Union[RawSession, _Mapping]] = ..., query: _Optional[bytes] = ..., k: _Optional[int] = ..., catalog: _Optional[bytes] = ...) -> None: ...

class RawFeedbackRequest(_message.Message):
    __slots__ = ("decision_id", "clicked_item_id", "accepted_suggestion", "issued_query", "position", "timestamp")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    CLICKED_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_QUERY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    decision_id: bytes
    clicked_item_id: bytes
    accepted_suggestion: bytes
    issued_query: bytes
    position: int
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, decision_id: _Optional[bytes] = ..., clicked_item_id: _Optional[bytes] = ..., accepted_suggestion: _Optional[bytes] = ..., issued_query: _Optional[bytes] = ..., position: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
