"""Text extraction from single files (.txt, .md, .html/.htm, .pdf) for :mod:`ragkit.ingest`.

Each extractor takes the file's bytes and returns ``(text, title)``; it raises
:class:`ExtractError` with a short reason (the caller adds the file name and decides whether to
fail or skip). Decoding is strict UTF-8 (a leading BOM is dropped); a bad byte is reported with
its byte offset and line.
"""
from __future__ import annotations

import io
import re
from html.parser import HTMLParser

BOM = b"\xef\xbb\xbf"
SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
            ".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf"}


class ExtractError(Exception):
    """A file cannot be turned into text; ``str(exc)`` is the reason."""


def decode_utf8(data: bytes) -> str:
    """Strict UTF-8 with the BOM dropped; the error names the byte offset and line."""
    skip = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        off = skip + exc.start
        line = data.count(b"\n", 0, off) + 1
        raise ExtractError(f"not UTF-8: byte 0x{data[off]:02x} at byte offset {off} (line {line}) "
                           f"cannot be decoded ({exc.reason}); convert the file to UTF-8, e.g. "
                           f"`iconv -f latin1 -t utf-8`") from None


# ---------------------------------------------------------------------------------------------


def extract_text(data: bytes) -> tuple[str, str | None]:
    return decode_utf8(data), None


_ATX = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)
_FRONT_TITLE = re.compile(r"^title:[ \t]*[\"']?(.*?)[\"']?[ \t]*$", re.M)


def extract_markdown(data: bytes) -> tuple[str, str | None]:
    """The Markdown source as text; title from YAML front matter ``title:`` or the first ``# `` heading."""
    text = decode_utf8(data)
    m = None
    if text.startswith("---\n") or text.startswith("---\r\n"):
        end = text.find("\n---", 3)
        if end > 0:
            m = _FRONT_TITLE.search(text, 3, end)
    m = m if m is not None and m.group(1).strip() else _ATX.search(text)
    return text, (m.group(1).strip() if m else None)


# ---------------------------------------------------------------------------------------------

_BLOCK = frozenset("""address article aside blockquote br dd details dialog div dl dt fieldset figcaption figure
footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table tr ul caption""".split())
_CELL = frozenset({"td", "th"})
_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas"})
_WS = re.compile(r"\s+")


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: script/style dropped, blocks on their own lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title: list[str] = []
        self.h1: list[str] = []
        self.skip = 0
        self.pre = 0
        self.in_title = False
        self.in_h1 = False
        self.seen_h1 = False

    def _newline(self) -> None:
        if self.out and not self.out[-1].endswith("\n"):
            self.out.append("\n")

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if tag == "title":
            self.in_title = True
        elif tag == "h1" and not self.seen_h1:
            self.in_h1 = True
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK:
            self._newline()
        elif tag in _CELL and self.out and not self.out[-1].endswith(("\n", "\t")):
            self.out.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "title":
            self.in_title = False
        elif tag == "h1" and self.in_h1:
            self.in_h1, self.seen_h1 = False, True
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in _BLOCK:
            self._newline()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.in_title:
            self.title.append(data)
            return
        if self.in_h1:
            self.h1.append(data)
        if not self.pre:
            data = _WS.sub(" ", data)
            if not self.out or self.out[-1].endswith(("\n", "\t", " ")):
                data = data.lstrip(" ")
        if data:
            self.out.append(data)

    def text(self) -> str:
        text = "".join(self.out)
        text = re.sub(r"[ \t]+\n", "\n", text)
        text = re.sub(r"\n{3,}", "\n\n", text)
        return text.strip()


def extract_html(data: bytes) -> tuple[str, str | None]:
    """Visible text (stdlib ``html.parser``); title from ``<title>``, else the first ``<h1>``."""
    p = _HTMLText()
    try:
        p.feed(decode_utf8(data))
        p.close()
    except ExtractError:
        raise
    except Exception as exc:  # html.parser is lenient; anything here is a real defect of the file
        raise ExtractError(f"unreadable HTML ({exc})") from None
    title = _WS.sub(" ", "".join(p.title)).strip() or _WS.sub(" ", "".join(p.h1)).strip() or None
    return p.text(), title


# ---------------------------------------------------------------------------------------------


def extract_pdf(data: bytes) -> tuple[str, str | None]:
    """Text of every page (pypdf), pages separated by a blank line; title from the PDF metadata."""
    from ._deps import require

    pypdf = require("pypdf", "reading PDF files")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception:
                ok = 0
            if not ok:
                raise ExtractError("encrypted PDF (needs a password); decrypt it first, e.g. `qpdf --decrypt`")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        meta = reader.metadata
        title = (meta.title if meta is not None else None) or None
    except ExtractError:
        raise
    except Exception as exc:  # pypdf raises many types for broken files
        raise ExtractError(f"unreadable PDF ({type(exc).__name__}: {exc})") from None
    return "\n\n".join(p for p in pages if p), (str(title).strip() or None) if title else None


EXTRACTORS = {"text": extract_text, "markdown": extract_markdown, "html": extract_html, "pdf": extract_pdf}


def extract(kind: str, data: bytes) -> tuple[str, str | None]:
    return EXTRACTORS[kind](data)
