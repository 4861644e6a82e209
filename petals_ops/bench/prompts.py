"""Few-shot prompt sets: ``Q: ...\\nA: ... The answer is N.`` blocks joined by a blank line.

A prompt file is either the plain prompt (leading ``#`` comment lines are ignored) or any text with the
prompt between the lines ``-----BEGIN PROMPT-----`` and ``-----END PROMPT-----`` (the layout of the
published sets such as Wei et al. 2022). The question under test is appended as ``\\n\\nQ: {question}\\nA:``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from petals_ops.bench.data import PACKAGE_DATA
from petals_ops.util.errors import InputError, OpsError
from petals_ops.util.fsutil import why_not_a_file

PROMPTS_DIR = PACKAGE_DATA / "prompts"
DEFAULT_PROMPT = PROMPTS_DIR / "gsm8k_cot_8shot_petals_ops.txt"
BEGIN, END = "-----BEGIN PROMPT-----", "-----END PROMPT-----"
BLOCK_RE = re.compile(r"Q: \S.*\nA: \S.*The answer is -?\$?[\d,]*\d(?:\.\d+)?\.", re.DOTALL)


@dataclass(frozen=True)
class PromptSet:
    name: str
    path: str
    prefix: str
    exemplars: int
    tuned: str | None = None  # the id of tuned prompts the model prepends (petals_ops.tune), if any

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.prefix.encode()).hexdigest()

    @property
    def prompt_id(self) -> str:
        return f"{self.name}@{self.sha256[:12]}" + (f"+tuned@{self.tuned}" if self.tuned else "")

    def render(self, question: str) -> str:
        if not self.prefix:  # 0-shot
            return f"Q: {question}\nA:"
        return f"{self.prefix}\n\nQ: {question}\nA:"


ZERO_SHOT = PromptSet(name="zero-shot", path="", prefix="", exemplars=0)


def parse_prompt_text(text: str, where: str) -> str:
    begin = re.search(rf"^{re.escape(BEGIN)}[ \t]*\n", text, re.MULTILINE)
    if begin:  # the markers count only as whole lines (a header may mention them)
        end = re.compile(rf"^{re.escape(END)}[ \t]*$", re.MULTILINE).search(text, begin.end())
        if not end:
            raise InputError(f"{where} has a {BEGIN} line but no {END} line",
                             fix="close the prompt with the END line")
        text = text[begin.end():end.start()]
    else:
        lines = text.split("\n")  # not splitlines: a U+2028 inside an exemplar is text, not a line break
        while lines and (lines[0].startswith("#") or not lines[0].strip()):
            lines.pop(0)
        text = "\n".join(lines)
    return text.strip("\n").rstrip()


# A few-shot prompt is a few KB; a bigger file is a mistake, and it would be tokenized whole.
MAX_PROMPT_FILE_BYTES = 1024 * 1024


def load_prompt_file(path: str | Path | None = None) -> PromptSet:
    path = Path(path or DEFAULT_PROMPT).expanduser()
    why = why_not_a_file(path)
    if why is not None and path == DEFAULT_PROMPT:  # nothing the user passed: the install is damaged
        raise OpsError(f"the packaged default prompt {path} {why}",
                       fix="reinstall petals-ops, or pass --prompt-file")
    if why is not None:
        raise InputError(f"--prompt-file {path} {why}", fix=f"pass a file like {DEFAULT_PROMPT}")
    try:
        if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise InputError(f"--prompt-file {path} is {path.stat().st_size:,} bytes; a prompt file may "
                             f"have at most {MAX_PROMPT_FILE_BYTES:,}",
                             fix=f"pass a prompt set like {DEFAULT_PROMPT}")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--prompt-file {path} is not a readable UTF-8 text file ({e})",
                         fix=f"pass a prompt set like {DEFAULT_PROMPT}") from e
    prefix = parse_prompt_text(text, str(path))
    blocks = prefix.split("\n\n") if prefix else []
    if not blocks:
        raise InputError(f"--prompt-file {path} holds no exemplars",
                         fix="write 'Q: ...\\nA: ... The answer is N.' blocks")
    for i, block in enumerate(blocks, start=1):
        if not BLOCK_RE.fullmatch(block):
            raise InputError(
                f"--prompt-file {path}: exemplar {i} is not 'Q: ...\\nA: ... The answer is N.' "
                f"({block[:60]!r})",
                fix="separate exemplars by one blank line; each ends with 'The answer is N.'",
            )
    return PromptSet(name=path.stem, path=str(path.resolve()), prefix=prefix, exemplars=len(blocks))
