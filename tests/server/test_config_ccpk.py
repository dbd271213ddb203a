"""api/config.py: `?ccpk=` read without werkzeug's query parsing gives what `request.args` gives.

The handshake itself (statuses, bodies, ZAP admission) runs over real HTTP in
test_api_e2e.py; this pins the fast query reading against werkzeug's, for the
shape every node sends and for the odd ones that must fall back."""
from urllib.parse import quote

import pytest
from flask import Flask, request

from pushjobs.protocol.keys import curve_keypair
from pushjobs.server.api.config import query_ccpk

KEY = curve_keypair()[0]
QUERIES = [
    f"ccpk={quote(KEY, safe='')}",  # what the agent and the stock client send
    f"ccpk={KEY}",  # unencoded: '+' is a space, '%' escapes may be invalid
    "ccpk=", "ccpk", "", "other=1", f"ccpk={quote(KEY, safe='')}&x=1", f"x=1&ccpk={quote(KEY, safe='')}",
    "ccpk=a&ccpk=b", "ccpk=%FF%FE", "ccpk=%C3%A9t%C3%A9", "ccpk=a+b%2Bc", "ccpk=a=b", "cc%70k=zz",
    "ccpk=%zz%4", "ccpk=\u00e9",
]


@pytest.mark.parametrize("qs", QUERIES)
def test_query_ccpk_is_request_args(qs):
    from werkzeug.test import EnvironBuilder

    app = Flask(__name__)
    environ = EnvironBuilder(path="/organizations/o/pushy/config/n").get_environ()
    environ["QUERY_STRING"] = qs.encode("utf-8").decode("latin-1")  # as a WSGI server passes it
    with app.request_context(environ):
        assert query_ccpk(request.environ) == request.args.get("ccpk")
