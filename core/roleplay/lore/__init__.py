"""Lorebooks (SillyTavern World Info): which entries fire for a reply, and the files they come in.

Entries are kept as SillyTavern's World Info keeps them (`uid`, `key`, `keysecondary`, `content`,
`constant`, `selective`, `selectiveLogic`, `order`, `disable`, `probability`, `useProbability`,
`caseSensitive`, `matchWholeWords`, `scanDepth`, ...), in the table `lorebooks` or, for a
character's own book, converted on the fly from the card's V2 `character_book`.

Activation follows SillyTavern (its public/scripts/world-info.js):

- An entry fires when one of its keys is found in the scan text: the last `scan_depth` messages
  (default 2; the user's new message is one of them). A key is plain text, or `/regex/flags`.
  Plain keys match ignoring case unless `caseSensitive`; with `matchWholeWords` a one-word key
  must stand as a word, `(?:^|\\W)key(?:$|\\W)` (a key of several words is searched as is). Entry
  values of None inherit the book's settings (`case_sensitive`, `match_whole_words`,
  `scan_depth`).
- With `selective` and secondary keys, `selectiveLogic` decides: AND_ANY (0) one of them is
  found too, NOT_ALL (1) not all of them, NOT_ANY (2) none of them, AND_ALL (3) all of them.
- `constant` entries always fire; `disable`d ones never. With `useProbability`, an entry that
  matched fires with `probability` percent, rolled on a generator seeded by the caller (so one
  reply is reproducible).
- Order: entries that fired are fed by ascending `order` (a larger order goes later, closer to
  the reply). The token budget is filled by descending order (the later, stronger entries
  first); the first entry that does not fit ends the filling, as in SillyTavern; entries with
  `ignoreBudget` always go. Tokens are counted with the engine's tokenizer when one is given,
  else estimated (UTF-8 bytes / 3, rounded up). The default budget is DEFAULT_BUDGET tokens: our
  context is unbounded (the state carries the whole chat), so SillyTavern's "25 % of the
  context" has nothing to be a share of; a book's `token_budget` setting raises or lowers it.
- Recursion (a book's `recursive` setting): the content of entries that fired is scanned for
  further keys, at most MAX_RECURSION rounds; `excludeRecursion` entries are not activated by
  recursion, `preventRecursion` entries' content is not scanned, `delayUntilRecursion` entries
  are activated only by recursion. SillyTavern's groups, timed effects (sticky, cooldown,
  delay) and vector matching are kept in the entries but not applied.
- A key that is a bad regular expression is skipped and noted (`LoreResult.errors`), never raised;
  so is one that runs out of time (regular expressions are matched by the `regex` package with a
  time limit each and one for all together), and so are the keys past the activation's bounds
  (activation.py: key checks, scanned characters). A book has at most MAX_ENTRIES entries: a file
  or a card with more is refused before any entry is read, and a card's book stored before that
  was refused is read up to the limit, which is said with the reply.

Placement for a recurrent state (issue 11): the entries that fire for a reply are fed as one
chunk just before that reply's header and stored with it (the message's meta "before", see
`ChatService.before_reply`), so the transcript never changes behind the state cache; constant
entries go in the chat's opening (`constant_lore`), which changes only when a book is edited.

Modules: entries.py (fields and defaults), formats.py (World Info files, V2 character books),
activation.py (which entries fire: pure), books.py (a chat's books from the store, and what is
fed), table.py (the editor's rows), service.py (LoreService: every change a front end makes to
lorebooks and to the books a character or a chat uses).
"""

from core.roleplay.lore.activation import Book, Fired, LoreResult, activate, estimate_tokens
from core.roleplay.lore.books import (
    books_for_conversation,
    character_book,
    constant_lore,
    fire_lore,
    reply_seed,
    with_constant_lore,
)
from core.roleplay.lore.entries import (
    AND_ALL,
    AND_ANY,
    DEFAULT_BUDGET,
    DEFAULT_SCAN_DEPTH,
    ENTRY_DEFAULTS,
    LOGIC_NAMES,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_RECURSION,
    NOT_ALL,
    NOT_ANY,
    POSITION_AFTER,
    POSITION_BEFORE,
    SETTINGS_DEFAULTS,
    LoreError,
    entry_title,
    new_entry,
    next_uid,
    normalize_entry,
    normalize_settings,
)
from core.roleplay.lore.formats import (
    ParsedBook,
    export_world_info,
    from_character_book,
    parse_world_info,
    to_character_book,
    world_info_bytes,
    world_info_filename,
)
from core.roleplay.lore.service import LoreService
from core.roleplay.lore.table import (
    ROW_COLUMNS,
    add_entry,
    apply_rows,
    entry_row,
    filter_entries,
    split_keys,
)

__all__ = [
    "AND_ALL",
    "AND_ANY",
    "DEFAULT_BUDGET",
    "DEFAULT_SCAN_DEPTH",
    "ENTRY_DEFAULTS",
    "LOGIC_NAMES",
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "MAX_RECURSION",
    "NOT_ALL",
    "NOT_ANY",
    "POSITION_AFTER",
    "POSITION_BEFORE",
    "ROW_COLUMNS",
    "SETTINGS_DEFAULTS",
    "Book",
    "Fired",
    "LoreError",
    "LoreResult",
    "LoreService",
    "ParsedBook",
    "activate",
    "add_entry",
    "apply_rows",
    "books_for_conversation",
    "character_book",
    "constant_lore",
    "entry_row",
    "entry_title",
    "estimate_tokens",
    "export_world_info",
    "filter_entries",
    "fire_lore",
    "from_character_book",
    "new_entry",
    "next_uid",
    "normalize_entry",
    "normalize_settings",
    "parse_world_info",
    "reply_seed",
    "split_keys",
    "to_character_book",
    "with_constant_lore",
    "world_info_bytes",
    "world_info_filename",
]
