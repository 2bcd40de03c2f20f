"""A griffe extension for the docs build: the docstrings' reST markup as Markdown.

The package's docstrings are Google style with reST inline markup (``:func:`x```,
``:math:`x```, ``.. math::`` blocks, ``Example::`` literal blocks), which Sphinx and
``help()`` readers know. mkdocstrings renders Markdown, so before rendering this rewrites,
on a copy of each docstring the build loads (the source files are not touched):

* ``:func:`~a.b.c``` (and ``:class:``, ``:mod:``, ``:data:``, ``:meth:``, ``:attr:``,
  ``:exc:``, ``:obj:``) as the code span ``c`` (``a.b.c`` without the tilde);
* ``:math:`x``` as inline math ``$x$`` and a ``.. math::`` block as a ``$$`` block
  (pymdownx.arithmatex renders both);
* a paragraph ending in ``::`` as one ending in ``:``; the indented literal block after it
  is already a Markdown code block.

It also documents a class that a module builds at import time (``jobs.JobSpec``, made by
``dataclasses.make_dataclass`` so that every registered solver option is a field) as the class
it is, with its base's docstring: static analysis sees an assignment.
"""

from __future__ import annotations

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:func|class|mod|data|meth|attr|exc|obj|const):`(~?)([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :func:`text <target>`
        target = target.split("<", 1)[0].strip()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(line.lstrip())]
            body: list[str] = []
            rest = stripped[len(".. math::"):].strip()
            if rest:
                body.append(rest)
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                body.append(lines[i])
                i += 1
            math = textwrap.dedent("\n".join(body)).strip("\n")
            out.extend([indent + "$$", *[indent + m for m in math.split("\n")], indent + "$$", ""])
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    text = _math_blocks(text)
    text = _MATH.sub(lambda m: f"${m.group(1).strip()}$", text)
    text = _ROLE.sub(_role, text)
    # "Example::" then a blank line and an indented block: a Markdown paragraph and code block.
    text = re.sub(r"::\n(\s*\n)", r":\n\1", text)
    return text


class RstToMarkdown(griffe.Extension):
    """Rewrite every loaded docstring's reST markup as Markdown (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        self._built_classes(pkg)
        seen: set[int] = set()

        def visit(obj) -> None:
            if id(obj) in seen or obj.is_alias:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)
            for member in obj.members.values():
                visit(member)

        visit(pkg)

    def _built_classes(self, pkg: griffe.Module) -> None:
        """Document ``X = dataclasses.make_dataclass("X", ..., bases=(Base,))`` as a class ``X(Base)``.

        Static analysis sees an assignment; the class is ``Base`` plus generated fields, so it
        gets ``Base``'s docstring (whose Attributes section documents the fields) and ``Base`` as
        its base. Nothing is imported: the build does not start JAX.
        """
        for module in [pkg, *pkg.modules.values()]:
            for name, member in list(module.members.items()):
                if member.is_alias or not member.is_attribute or member.value is None:
                    continue
                match = re.match(r"dataclasses\.make_dataclass\(.*bases=\((\w+),?\)", str(member.value), re.S)
                if not match or match.group(1) not in module.members:
                    continue
                base = module.members[match.group(1)]
                cls = griffe.Class(name, lineno=member.lineno, endlineno=member.endlineno,
                                   docstring=base.docstring, bases=[match.group(1)])
                cls.labels.add("dataclass")
                module.set_member(name, cls)
