"""Where litlab's shipped assets live: ``asset_path`` and nothing else.

The assets (frozen encoder, tokenizer, fonts, word list, each with its CARD.md) sit in the
repository's top-level ``data/`` folder. The wheel carries the same tree as package data of
``litlab._assets`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml), so a non-editable
``pip install git+...`` finds them too. This module imports only the standard library.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
# First the repository checkout (editable install, or running from the repo), then the copy
# installed with the package. The checkout is recognised by its pyproject.toml, so a stray
# site-packages/data folder is never mistaken for it.
_ROOTS = tuple(root for root, marker in ((_CHECKOUT / "data", _CHECKOUT / "pyproject.toml"),
                                         (_PACKAGE / "_assets", _PACKAGE / "_assets"))
               if marker.exists())


def asset_path(*parts: str | Path) -> Path:
    """Absolute path of a shipped asset, e.g. ``asset_path("encoder", "vit_pretrained.npz")``.

    Looks in the repository's ``data/`` folder (editable install or a checkout) and then in
    the copy inside the installed package, so it does not depend on the working directory.
    A leading ``data`` component is dropped: ``asset_path("data/encoder/vit_pretrained.npz")``
    is the same file. That is how a relative path beginning with ``data/`` (as in
    ``litlab/configs``) is resolved: if it does not exist relative to the working directory,
    pass it to this function. With no parts, returns the assets folder itself.

    Raises FileNotFoundError naming the asset and every folder that was searched.
    """
    rel = Path(*parts) if parts else Path()
    if rel.is_absolute():
        raise ValueError(f"asset_path takes a path relative to data/, got {rel}")
    if rel.parts[:1] == ("data",):
        rel = Path(*rel.parts[1:])
    for root in _ROOTS:
        if (root / rel).exists():
            return root / rel
    searched = ", ".join(str(root) for root in _ROOTS) or (
        f"none found (neither {_CHECKOUT / 'data'} in a checkout nor {_PACKAGE / '_assets'})")
    raise FileNotFoundError(
        f"litlab asset data/{rel.as_posix()} not found; searched: {searched}. The assets ship "
        "in the repository's data/ folder and inside the litlab wheel; reinstall litlab "
        "(pip install -e . from a full checkout, or pip install git+...) if it is missing.")
