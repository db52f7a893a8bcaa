"""What the tests share: tiny model makers, a forced-token back end, store and card builders,
AppTest helpers and the state-invariant check. Tests import it as `from tests.support... import`."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository's root
SHARED = REPO.parent / "shared"  # ../shared beside the checkout, where it exists
