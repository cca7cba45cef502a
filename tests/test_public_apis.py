"""The product uses libraries only through their public API: no `obj._private` attribute of another
package anywhere in msapp/ (the next release of SQLAlchemy, urllib3 or Flask may rename any of them).

An underscore attribute is allowed only where msapp itself defines that name (its own classes' and
modules' private parts)."""
import ast
from pathlib import Path

MSAPP = Path(__file__).resolve().parent.parent / "msapp"
# Public despite the underscore, as their libraries document them: SQLAlchemy's Row._mapping (named so
# that no column can shadow it), Flask's current_app._get_current_object() and os._exit.
DOCUMENTED = {"_mapping", "_get_current_object", "_exit"}


def _files():
    return [p for p in MSAPP.rglob("*.py") if "__pycache__" not in p.parts]


def _own_private_names() -> set:
    names = set()
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def test_no_private_attribute_of_a_library_is_used():
    own = _own_private_names() | DOCUMENTED
    found = []
    for path in _files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and node.attr not in own:
                found.append(f"{path.relative_to(MSAPP.parent)}:{node.lineno}: .{node.attr}")
    assert found == []


def test_the_check_sees_a_private_attribute(tmp_path):
    """The check itself: a library's private name is found, one of our own is not."""
    sample = "import sqlalchemy\nx = compiled._result_columns\nclass A:\n    _mine = 1\nA()._mine\n"
    tree = ast.parse(sample)
    attrs = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    assert "_result_columns" in attrs and "_result_columns" not in _own_private_names()
