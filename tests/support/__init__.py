"""What the tests share: tiny model makers, a forced-token back end, store and card builders,
AppTest helpers and the state-invariant check. Tests import it as `from tests.support... import`."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository's root
FIXTURES = REPO / "tests" / "fixtures"  # cards and characters made by others (README there)
