"""Errors → responses, in one place.

Every error body is JSON. The auth pipeline and the resources raise
`AuthError`/`ApiError` (status + body, the original's shapes of §10.2);
Flask's routing errors (404 no route, 405 wrong method) get the common
`{"error": [message]}` shape; anything unexpected is logged with its
traceback and answered 500 without internals.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import json

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from pushjobs.server.auth import AuthError

log = logging.getLogger(__name__)


class ApiError(AuthError):
    """A resource's error answer (same shape as AuthError)."""


def error(status: int, message: str, headers: Optional[Mapping[str, str]] = None) -> ApiError:
    """`{"error": [message]}`: the shape of most errors."""
    return ApiError(status, {"error": [message]}, headers)


def validation_error(message: str) -> ApiError:
    """`{"error": message}`: the shape of job-validation errors (§10.5)."""
    return ApiError(400, {"error": message})


def json_response(body: Any, status: int = 200, headers: Optional[Mapping[str, str]] = None) -> Response:
    resp = Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AuthError)
    def _auth_error(exc: AuthError) -> Response:
        if exc.status >= 400 and exc.status != 404:
            log.info("%s %s -> %s %s", request.method, request.path, exc.status, exc.body)
        return json_response(exc.body, exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {404: "not found", 405: "method not allowed"}
        body = {"error": [messages.get(status, exc.description or exc.name)]}
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return json_response(body, status, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": ["internal server error"]}, 500)
