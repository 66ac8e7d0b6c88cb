"""The HTTP server: any store over HTTP, with token auth (``asyncart serve``)."""

from ._app import make_app as make_app
from ._blob_routes import Limits as Limits
from ._main import serve as serve
from ._main import serve_main as serve_main
from ._main import token_main as token_main
from ._tokens import create_token as create_token

__all__ = ("Limits", "create_token", "make_app", "serve", "serve_main", "token_main")
