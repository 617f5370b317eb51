#!/usr/bin/env python3
"""Checks that the documentation names only things that exist.

For README.md and every docs/**/*.md (or the Markdown files given as arguments):

- every relative Markdown link (`[text](target)`, `![alt](target)`, `[id]: target`) points
  to a file or directory that exists; a `#anchor` into a Markdown file (or into the same
  file) must match one of its headings, slugged the way GitHub does;
- every repository path named in backticks exists: a span (or a word of a span) whose first
  component is a top-level directory of the repository (`crates/x/src/y.rs`,
  `scripts/up.sh`, `migrations/0001_data_model.sql`, `docs/...`, `deploy/...`) or a crate
  (`herald-storage/src/relay.rs`, read as under `crates/`). A `:line` or `:first-last`
  suffix must be within the file.

- every requirement tag (`R4`, `R31-R36`) outside code blocks is defined in
  docs/requirements.md (a heading `### R4`).

  The words of shell code blocks (```sh, ```bash, ...) are checked the same way, so
  `just publish docs/examples/first-message.json` names a file that exists.

Skipped on purpose: URLs, absolute paths, and anything with a placeholder or a glob
(`crates/sender-<name>/`, `{p}.send.sms`, `crates/*/Cargo.toml`, `...`), since they name no
single file; links and spans inside code blocks, and other code blocks (diagrams, JSON);
and the paths in RUNTIME_ONLY below, which exist only on a machine where Herald has run.

Prints one `file:line: message` per problem and a closing count line; exits 1 on any
problem. Python 3 standard library only. Run from anywhere: `python3 scripts/check-docs.py`.
"""

import os
import re
import sys
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Paths the docs name that exist only at run time, not in a checkout. A path equal to one
# of these, or under one ending in `/`, is not checked.
RUNTIME_ONLY = (
    ".local/",  # `just up`: logs, pids, state (.gitignore)
    "target/",  # cargo's build output (.gitignore)
    "deploy/.env",  # the operator's copy of deploy/herald.env.example, read by compose
)

# Top-level entries that are never repository paths, even when present on this machine.
NOT_IN_REPO = {".git", ".local", "target"}

PLACEHOLDER = re.compile(r"[<>{}*?\[\]$]|\.\.\.|…")
LINE_SUFFIX = re.compile(r"^(.*?):L?(\d+)(?:-L?(\d+))?$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
SHELL_FENCES = {"sh", "bash", "shell", "console", "zsh"}
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
INLINE_LINK = re.compile(r"\]\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REF_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.I)
REQUIREMENT_TAG = re.compile(r"\bR[0-9]{1,3}\b")
REQUIREMENTS = os.path.join(ROOT, "docs", "requirements.md")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")


def slug(heading):
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # punctuation goes, `_` and `-` stay
    return text.replace(" ", "-")


def scan(lines):
    """Returns (line number, text outside code spans, code spans) for the lines outside
    fenced code blocks (and each shell code block line as one span), and the file's anchors."""
    anchors = set()
    counts = {}
    out = []
    fence = None
    shell = False
    prev = ""
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            elif shell:
                out.append((number, "", [line.split("#")[0]]))  # no links; words, no comment
            prev = ""
            continue
        if match:
            fence = match.group(1)
            shell = match.group(2).lower() in SHELL_FENCES
            prev = ""
            continue
        heading = None
        atx = ATX_HEADING.match(line)
        if atx:
            heading = atx.group(2) or ""
        elif (
            SETEXT_UNDERLINE.match(line)
            and prev.strip()
            and not prev.lstrip().startswith(("|", "-", "*", ">", "#"))
        ):
            heading = prev
        if heading is not None:
            base = slug(heading)
            n = counts.get(base, 0)
            counts[base] = n + 1
            anchors.add(base if n == 0 else f"{base}-{n}")
        anchors.update(HTML_ANCHOR.findall(line))
        spans = [m.group(2).strip() for m in CODE_SPAN.finditer(line)]
        text = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        out.append((number, text, spans))
        prev = line
    return out, anchors


class Checker:
    def __init__(self):
        self.problems = []
        self.anchor_cache = {}
        self.line_counts = {}
        self.roots = {
            name
            for name in os.listdir(ROOT)
            if os.path.isdir(os.path.join(ROOT, name)) and name not in NOT_IN_REPO
        }
        self.tags = set()
        if os.path.isfile(REQUIREMENTS):
            with open(REQUIREMENTS, encoding="utf-8") as f:
                self.tags = set(re.findall(r"(?m)^#{2,4} (R[0-9]+)\s*$", f.read()))
        crates = os.path.join(ROOT, "crates")
        self.crates = set(os.listdir(crates)) if os.path.isdir(crates) else set()

    def problem(self, path, number, message):
        self.problems.append(f"{os.path.relpath(path, ROOT)}:{number}: {message}")

    def anchors_of(self, path):
        if path not in self.anchor_cache:
            with open(path, encoding="utf-8") as f:
                self.anchor_cache[path] = scan(f.read().splitlines())[1]
        return self.anchor_cache[path]

    def check_file(self, path):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        scanned, anchors = scan(lines)
        self.anchor_cache[path] = anchors
        for number, text, spans in scanned:
            targets = [m.group(1) for m in INLINE_LINK.finditer(text)]
            definition = REF_DEFINITION.match(text)
            if definition:
                targets.append(definition.group(1))
            for target in targets:
                self.check_link(path, number, target)
            # requirements.md itself names the gaps between the tags.
            for tag in REQUIREMENT_TAG.findall(text) if self.tags and path != REQUIREMENTS else []:
                if tag not in self.tags:
                    self.problem(path, number, f"requirement {tag} is not in docs/requirements.md")
            for span in spans:
                words = span.split()
                for word in words if len(words) > 1 else [span]:
                    self.check_code_path(path, number, word.strip("'\"").rstrip(".,;:)"), span)

    def check_link(self, path, number, target):
        target = target.strip()
        if target.startswith("<") and target.endswith(">"):
            target = target[1:-1]
        if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            return  # a URL (https:, mailto:, ...)
        file_part, _, anchor = target.partition("#")
        file_part = urllib.parse.unquote(file_part.split("?")[0])
        if file_part:
            base = ROOT if file_part.startswith("/") else os.path.dirname(path)
            resolved = os.path.normpath(os.path.join(base, file_part.lstrip("/")))
            if not os.path.exists(resolved):
                self.problem(path, number, f"link target does not exist: {target}")
                return
        else:
            resolved = path
        if anchor and resolved.endswith(".md") and os.path.isfile(resolved):
            anchor = urllib.parse.unquote(anchor).lower()
            if anchor not in self.anchors_of(resolved):
                where = "" if resolved == path else f" in {os.path.relpath(resolved, ROOT)}"
                self.problem(path, number, f"no heading for anchor #{anchor}{where}: {target}")

    def check_code_path(self, path, number, word, span):
        if "/" not in word or "://" in word or word.startswith(("/", "~")):
            return
        if PLACEHOLDER.search(word):
            return
        word = word.split("#")[0]
        first_line = last_line = None
        suffix = LINE_SUFFIX.match(word)
        if suffix:
            word = suffix.group(1)
            first_line = int(suffix.group(2))
            last_line = int(suffix.group(3) or first_line)
        if word.startswith("./"):
            word = word[2:]
        first = word.split("/")[0]
        if any(word == p.rstrip("/") or word.startswith(p) for p in RUNTIME_ONLY if p.endswith("/")):
            return
        if word in RUNTIME_ONLY:
            return
        if first in self.roots:
            relative = word
        elif first in self.crates:
            relative = "crates/" + word
        else:
            return  # not a repository path (a MIME type, a route, a file relative to a crate)
        resolved = os.path.join(ROOT, relative)
        if not os.path.exists(resolved):
            span = span.strip()
            shown = span if span == word else f"{word} (in `{span}`)"
            self.problem(path, number, f"named path does not exist: {shown}")
            return
        if first_line is not None:
            if not os.path.isfile(resolved):
                self.problem(path, number, f"line number on a directory: {span}")
                return
            if resolved not in self.line_counts:
                with open(resolved, encoding="utf-8", errors="replace") as f:
                    self.line_counts[resolved] = sum(1 for _ in f)
            if not 1 <= first_line <= last_line <= self.line_counts[resolved]:
                self.problem(
                    path,
                    number,
                    f"line {last_line} is past the end of {relative} "
                    f"({self.line_counts[resolved]} lines): {span}",
                )


def default_files():
    files = [os.path.join(ROOT, "README.md")]
    for directory, subdirs, names in os.walk(os.path.join(ROOT, "docs")):
        subdirs.sort()
        files += [os.path.join(directory, n) for n in sorted(names) if n.endswith(".md")]
    return files


def main(argv):
    files = [os.path.abspath(a) for a in argv] or default_files()
    checker = Checker()
    for path in files:
        checker.check_file(path)
    for line in checker.problems:
        print(line)
    count = len(checker.problems)
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
    print(f"check-docs: {plural(count, 'problem')} in {plural(len(files), 'file')}")
    return 1 if count else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
