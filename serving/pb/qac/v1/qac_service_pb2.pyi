import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Session(_message.Message):
    __slots__ = ("session_id", "user_id", "previous_queries", "timestamp")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_QUERIES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    user_id: str
    previous_queries: _containers.RepeatedScalarFieldContainer[str]
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., user_id: _Optional[str] = ..., previous_queries: _Optional[_Iterable[str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("session", "prefix", "k", "preview_k", "preview_completions", "catalog")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_K_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    session: Session
    prefix: str
    k: int
    preview_k: int
    preview_completions: int
    catalog: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., prefix: _Optional[str] = ..., k: _Optional[int] = ..., preview_k: _Optional[int] = ..., preview_completions: _Optional[int] = ..., catalog: _Optional[str] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("text", "score", "source", "preview", "preview_decision_id", "highlight_start", "highlight_end")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHT_START_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHT_END_FIELD_NUMBER: _ClassVar[int]
    text: str
    score: float
    source: str
    preview: _containers.RepeatedCompositeFieldContainer[SearchItem]
    preview_decision_id: str
    highlight_start: int
    highlight_end: int
    def __init__(self, text: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[str] = ..., preview: _Optional[_Iterable[_Union[SearchItem, _Mapping]]] = ..., preview_decision_id: _Optional[str] = ..., highlight_start: _Optional[int] = ..., highlight_end: _Optional[int] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("completions", "model_version", "decision_id")
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    model_version: str
    decision_id: str
    def __init__(self, completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., model_version: _Optional[str] = ..., decision_id: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("session", "query", "k", "catalog")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    session: Session
    query: str
    k: int
    catalog: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., query: _Optional[str] = ..., k: _Optional[int] = ..., catalog: _Optional[str] = ...) -> None: ...

class SearchItem(_message.Message):
    __slots__ = ("item_id", "text", "score", "arms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    score: float
    arms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., arms: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("items", "decision_id", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SearchItem]
    decision_id: str
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[SearchItem, _Mapping]]] = ..., decision_id: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("decision_id", "clicked_item_id", "accepted_suggestion", "issued_query", "position", "timestamp")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    CLICKED_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_QUERY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    clicked_item_id: str
    accepted_suggestion: str
    issued_query: str
    position: int
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, decision_id: _Optional[str] = ..., clicked_item_id: _Optional[str] = ..., accepted_suggestion: _Optional[str] = ..., issued_query: _Optional[str] = ..., position: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("duplicate", "reward")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    reward: float
    def __init__(self, duplicate: _Optional[bool] = ..., reward: _Optional[float] = ...) -> None: ...
