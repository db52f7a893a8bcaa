"""What the catalog and the downloader share about talking to the Hub through `huggingface_hub`
(the Hub's own client): which endpoint, whether to send the user's token, and what a failure
means in words a user can act on. No streamlit.

The endpoint is always passed to the library explicitly (`endpoint=`): the Settings field, else
$HF_ENDPOINT, else https://huggingface.co (core.settings.AppSettings.hub_endpoint). A user's Hub
token (huggingface_hub's own login) goes only to huggingface.co, never to a mirror.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from core.errors import ModelError

DEFAULT_HUB = "https://huggingface.co"
METADATA_TIMEOUT_S = 15.0  # the API's listing and a file's HEAD; the body's reads: the library's

_HUB_HOSTS = ("huggingface.co", "hf.co")


class HubError(ModelError):
    """The Hub (or the mirror) could not give what was asked; the message says why. `offline`:
    it could not be reached at all (no network, wrong address, HF_HUB_OFFLINE)."""

    def __init__(self, message: str, offline: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.offline = offline
        self.status = status


def host(endpoint: str) -> str:
    """ "huggingface.co", "127.0.0.1:8765": the endpoint as a user reads it."""
    return urlsplit(endpoint).netloc or endpoint


def is_official(endpoint: str) -> bool:
    name = (urlsplit(endpoint).hostname or "").lower()
    return name in _HUB_HOSTS or name.endswith(".huggingface.co")


def token_for(endpoint: str) -> bool | None:
    """What to give huggingface_hub as `token`: None (its default: the user's saved login, if
    any) for the Hub itself, False (no token) for any other host."""
    return None if is_official(endpoint) else False


def explain(error: BaseException, endpoint: str, what: str) -> HubError:
    """A HubError saying why `what` (e.g. "the files of BlinkDL/rwkv7-g1") failed on
    `endpoint`, from an exception of huggingface_hub or of its HTTP client."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    where = host(endpoint)
    if isinstance(error, HubError):
        return error
    if isinstance(error, OfflineModeIsEnabled):
        return HubError(
            f"Downloads are off: HF_HUB_OFFLINE is set in the app's environment, so {what} "
            "cannot be fetched. Unset it to download models.",
            offline=True,
        )
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status == 404:
            return HubError(f"{where} has no {what} (404: not found).", status=status)
        if status in (401, 403):
            return HubError(
                f"{where} refused {what} ({status}): the repository is private or gated; "
                "accept its terms on the Hub, or log in with `hf auth login`.",
                status=status,
            )
        if status == 429:
            return HubError(f"{where} asks to slow down (429): try again in a minute.", status=429)
        if status is not None and status >= 500:
            return HubError(
                f"{where} failed to give {what} ({status}: a server error). Try again later, "
                "or use a mirror (Settings → Download from).",
                status=status,
            )
        return HubError(f"{where} refused {what} ({status}).", status=status)
    if isinstance(error, httpx2.ConnectTimeout):
        return HubError(
            f"Cannot reach {where} (no answer to connect): no network, or the address is wrong. "
            "Everything else works without it; users in China can set a mirror in Settings "
            "→ Download from.",
            offline=True,
        )
    if isinstance(error, httpx2.TimeoutException):
        return HubError(
            f"{where} stopped answering while sending {what} (no data for a while). Try again; "
            "what was already received is kept.",
        )
    if isinstance(error, httpx2.ConnectError | httpx2.NetworkError | httpx2.UnsupportedProtocol):
        return HubError(
            f"Cannot reach {where} ({_reason(error)}): no network, or the address is wrong. "
            "Everything else works without it; users in China can set a mirror in Settings "
            "→ Download from.",
            offline=True,
        )
    if isinstance(error, httpx2.HTTPError):
        return HubError(f"Fetching {what} from {where} failed: {_reason(error)}.")
    if isinstance(error, OSError):
        return HubError(f"Fetching {what} from {where} failed: {error.strerror or error}.")
    return HubError(f"Fetching {what} from {where} failed: {_reason(error)}.")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text[:200] or error.__class__.__name__


__all__ = [
    "DEFAULT_HUB",
    "METADATA_TIMEOUT_S",
    "HubError",
    "explain",
    "host",
    "is_official",
    "token_for",
]
