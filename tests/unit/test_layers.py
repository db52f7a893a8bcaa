"""The layers of core/ (docs/ARCHITECTURE.md, "Layers"): which part may import which, no import
cycles, and no streamlit anywhere in core. Read from the source, so a new import that breaks a
rule fails here before anyone has to find it in a review."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

CORE = REPO / "core"

# what each part of core may import from core (besides itself); a part is a subpackage or a
# top-level module, and inside core.roleplay (role-play content: cards, chats, lore...) each of
# its modules and subpackages
FOUNDATION = {"core.config", "core.errors", "core.text", "core.contracts"}
MAY_IMPORT: dict[str, set[str]] = {
    "core.config": set(),
    "core.errors": set(),
    "core.text": set(),
    "core.contracts": set(),  # Role, Op, Stop, ReplyMeta: the words the layers share
    "core.i18n": set(),
    "core.auth": set(),
    "core.roleplay.group": set(),  # who speaks next in a group chat: pure functions
    "core.cli_args": {"core.config"},
    "core.roleplay.avatars": FOUNDATION,
    "core.roleplay.macros": FOUNDATION,  # {{time}}, {{random::a::b}}, {{roll:dN}}...: pure
    # characters' RWKV state files: read, checked and stored (the engine gets their arrays)
    "core.roleplay.state_files": FOUNDATION,
    "core.prompt": FOUNDATION,
    "core.backends": FOUNDATION | {"core.prompt"},
    "core.engine": FOUNDATION | {"core.prompt", "core.backends"},
    "core.store": FOUNDATION | {"core.roleplay.avatars"},
    # lorebooks: activation (pure) and the books of a chat (from the store)
    "core.roleplay.lore": FOUNDATION | {"core.prompt", "core.store", "core.roleplay.macros"},
    "core.chat": FOUNDATION
    | {"core.prompt", "core.store", "core.engine", "core.roleplay.group"}
    | {"core.roleplay.lore", "core.roleplay.macros", "core.roleplay.chat_io"}
    | {"core.roleplay.state_files"},
    "core.roleplay.cards": FOUNDATION | {"core.roleplay.avatars", "core.store"},
    "core.roleplay.chat_io": FOUNDATION | {"core.store"},
    # CharacterService: the front ends' way to change characters (a picture and a row together)
    "core.roleplay.characters": FOUNDATION
    | {"core.roleplay.avatars", "core.roleplay.cards", "core.roleplay.state_files", "core.store"},
    # model files: the catalog on the Hub, what fits, downloads, .pth -> GGUF
    "core.models": FOUNDATION | {"core.backends"},
    # API keys and allowed origins: the settings that say who may use the API
    "core.access": FOUNDATION | {"core.auth", "core.store"},
    # the app's settings: typed, checked, and applied to the loaded model (threads, cache)
    "core.settings": FOUNDATION
    | {"core.auth", "core.i18n", "core.access", "core.store", "core.engine", "core.backends"}
    | {"core.models"},  # the Hub's address, the default of the download endpoint
    "core.runtime": FOUNDATION
    | {"core.cli_args", "core.store", "core.roleplay.cards", "core.engine", "core.backends"}
    | {"core.chat", "core.auth", "core.settings"},
    # the HTTP API: a front end like the pages, on the runtime and the chat service
    "core.api": FOUNDATION
    | {"core.auth", "core.runtime", "core.chat", "core.engine", "core.prompt"}
    | {"core.store"}
    | {"core.roleplay.avatars", "core.roleplay.cards", "core.roleplay.chat_io", "core.backends"},
    # the API as one route of the app's server, imported (lazily) before the API itself
    "core.api_mount": {"core.api"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# a package's `__main__` (`python -m core.chat ...`) is a command-line front end, like the pages:
# it sits above core and may use any part of it (never streamlit)
ENTRY_POINTS = "core.*.__main__"
MAY_IMPORT[ENTRY_POINTS] = set(MAY_IMPORT)


# packages whose __init__ only says what is inside: anyone may import them
PACKAGES = {"core", "core.roleplay"}


def part_of(module: str) -> str:
    if module.endswith(".__main__"):
        return ENTRY_POINTS
    depth = 3 if module.startswith("core.roleplay.") else 2
    return ".".join(module.split(".")[:depth])


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from core import x`
    return found


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


def test_every_part_of_core_is_in_the_layer_table() -> None:
    parts = {part_of(m) for m in core_graph()} - PACKAGES
    assert parts <= set(MAY_IMPORT), f"add {sorted(parts - set(MAY_IMPORT))} to MAY_IMPORT"


def test_each_part_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, deps in core_graph().items():
        part = part_of(module)
        for dep in deps:
            target = part_of(dep)
            if target not in {part, *PACKAGES} and target not in MAY_IMPORT.get(part, set()):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, wrong


def test_no_import_cycle_inside_core() -> None:
    graph = core_graph()
    # a package's __init__ re-exports its modules; an edge from a module to its own package's
    # __init__ would only be a cycle through that re-export, so it counts like any other
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_core_never_imports_streamlit() -> None:
    offenders = [
        module_name(p)
        for p in CORE.rglob("*.py")
        if any(m.split(".")[0] == "streamlit" for m in imports_of(p))
    ]
    assert offenders == []


def test_the_checks_see_real_imports() -> None:
    """The graph is not empty by mistake: known edges are in it."""
    graph = core_graph()
    assert "core.backends.base" in graph["core.engine.engine"]
    assert "core.store.store" in graph["core.store"]
    assert "core.prompt.chatml" in graph["core.backends.llama"]


# --- the front ends hold no rules of the core ------------------------------------------------
# Pages (and Home.py) and the HTTP API change data only through core's services (the chat
# service, the character and lorebook services, the settings): a front end that wrote to the
# store itself, or set the runtime's state, would carry a rule of the core that the other front
# end then lacks. Read from the source, like the imports above.
FRONT_ENDS = [REPO / "Home.py", *sorted((REPO / "pages").glob("*.py"))]
FRONT_ENDS += sorted((CORE / "api").glob("*.py"))
RUNTIME_STATE = {"unloaded", "failed", "override", "_loading", "_store", "_chat"}


def store_write_methods() -> set[str]:
    """The Store's public methods that write: every public method whose name does not say it
    only reads (get_, list_, ...)."""
    from core.store import Store

    reads = ("get_", "list_", "unique_name", "user_name", "setting_str", "close")
    return {
        name
        for name in dir(Store)
        if not name.startswith("_")
        and callable(getattr(Store, name))
        and not name.startswith(reads)
    }


def test_the_store_write_list_is_real() -> None:
    writes = store_write_methods()
    assert {"create_character", "add_message", "set_setting", "delete_conversation"} <= writes
    assert "list_messages" not in writes and "get_setting" not in writes


def test_front_ends_never_write_to_the_store_or_set_runtime_state() -> None:
    writes = store_write_methods()
    wrong = []
    for path in FRONT_ENDS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # a call or a reference (a callback passed to a button) of a Store write method
            if isinstance(node, ast.Attribute) and node.attr in writes:
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} uses .{node.attr}")
            # an attribute of the runtime assigned, or a runtime dict cleared
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr in RUNTIME_STATE:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} sets .{t.attr}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("clear", "pop", "update")
                and isinstance(node.value, ast.Attribute)
                and node.value.attr in RUNTIME_STATE
            ):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} changes .{node.value.attr}")
    assert not wrong, "\n".join(wrong)
