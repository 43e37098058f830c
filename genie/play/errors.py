"""What a bad request to `genie play` gets: a 4xx status and one message, never a crash."""

from __future__ import annotations


class PlayRequestError(Exception):
    """A bad request from the page: answered with `status` (4xx) and `message`; the server and the connection
    go on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
