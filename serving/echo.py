"""``qac.v1.Echo``: a unary RPC that does nothing but copy its payload back.

It is served by every ``qac serve`` process beside ``qac.v1.QueryService`` so that the load test
(:mod:`bench.load`) can measure, against the same process and in the same run, the floor that the
Python gRPC stack itself costs on the machine; every Complete / Search / Feedback latency is then
also reported as a ratio to this floor.
"""
from __future__ import annotations

from typing import Any

import grpc

from serving.pb.qac.v1 import echo_pb2

ECHO_SERVICE_NAME = echo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name  # "qac.v1.Echo"


def echo(request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
    """The Echo handler: ``EchoResponse(payload=request.payload)``; never aborts."""
    return echo_pb2.EchoResponse(payload=request.payload)


def echo_method_handlers() -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers of ``qac.v1.Echo`` (name -> handler), for :func:`serving.servicer.register_handlers`."""
    return {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=echo_pb2.EchoRequest.FromString,
            response_serializer=echo_pb2.EchoResponse.SerializeToString,
        ),
    }
