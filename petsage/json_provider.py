"""JSON bodies encoded by orjson: what every API answer pays, in a fraction of the time.

Flask's default provider encodes through the standard library's ``json`` (about a tenth
of a smoke test's in-process cost). This one writes the same documents with orjson, a
well-kept compiled encoder PetSage already uses for its log lines, and leaves every case
it would encode differently to Flask: dates, times, decimals and dataclasses go
through Flask's own conversions, and whatever orjson refuses (an integer beyond 64 bits,
say), pretty-printed debug output and sorted keys take Flask's path whole. One
difference remains by design: text is written as UTF-8 rather than ``\\u`` escapes,
which RFC 8259 asks of JSON exchanged between systems; it parses to the same document.
"""

from typing import Any, cast

import flask
import orjson
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response

# Dates and dataclasses are handed to Flask's ``default`` (HTTP dates, ``asdict``):
# orjson's own forms differ from what Flask has always written.
OPTIONS = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider, with responses encoded by orjson where it agrees."""

    # Bodies keep the order their schemas declare, as the OpenAPI document shows it.
    sort_keys = False

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """A compact JSON response, as Flask's, encoded by orjson."""
        pretty = (self.compact is None and self._app.debug) or self.compact is False
        if pretty or self.sort_keys:
            return super().response(*args, **kwargs)
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(obj, default=self.default, option=OPTIONS)
        except orjson.JSONEncodeError:
            # Flask encodes it, or raises its own TypeError, as it always has.
            return super().response(*args, **kwargs)
        response_class = cast("type[flask.Response]", self._app.response_class)
        return response_class(body + b"\n", mimetype=self.mimetype)
