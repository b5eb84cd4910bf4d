"""Where a manager's HTTP/JSON socket is: beside its control socket.

`DIR/control.sock` -> `DIR/control.http.sock` (any other name gets `.http.sock`
appended). The manager (shoal/manager/restapi.py) and swarmctl's read commands
both derive it from the control socket, so `--socket` and `--control-socket`
keep naming one thing. Kept free of imports: swarmctl loads it on every read.
"""

from __future__ import annotations

SUFFIX = ".http.sock"


def rest_socket(control_socket: str) -> str:
    return control_socket.removesuffix(".sock") + SUFFIX
