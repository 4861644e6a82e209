"""Few-shot prompt sets: ``Q: ...\\nA: ... The answer is N.`` blocks joined by a blank line.

A prompt file is either the plain prompt (leading ``#`` comment lines are ignored) or any text with the
prompt between the lines ``-----BEGIN PROMPT-----`` and ``-----END PROMPT-----`` (the layout of the
published sets such as Wei et al. 2022). The question under test is appended as ``\\n\\nQ: {question}\\nA:``.
An exemplar may hold several answers, one ``A: ...`` line each (for a method that votes inside a completion).

A :class:`Template` renders a prompt set otherwise: N of its exemplars (the first N or a seeded choice), in a
seeded order, with an instruction line before each ``Q:`` and before each first ``A:``. Everything it
changes is in the prompt's id, so runs of different templates never share a run dir.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from petals_ops.bench.data import PACKAGE_DATA
from petals_ops.util.errors import InputError, OpsError
from petals_ops.util.fsutil import why_not_a_file

PROMPTS_DIR = PACKAGE_DATA / "prompts"
DEFAULT_PROMPT = PROMPTS_DIR / "gsm8k_cot_8shot_petals_ops.txt"
BEGIN, END = "-----BEGIN PROMPT-----", "-----END PROMPT-----"
BLOCK_RE = re.compile(r"Q: \S.*\nA: \S.*The answer is -?\$?[\d,]*\d(?:\.\d+)?\.", re.DOTALL)
ANSWER_END_RE = re.compile(r"The answer is -?\$?[\d,]*\d(?:\.\d+)?\.\Z")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _seeded_rank(kind: str, seed: int, n: int) -> list[int]:
    """0..n-1 ordered by a hash of (kind, seed, index): a seeded permutation that does not depend on
    Python's random module (so a run resumed by another Python version renders the same prompt), and whose
    order of any subset is the order of that subset in the whole permutation."""
    return sorted(range(n), key=lambda i: _sha(f"{kind}:{seed}:{i}"))


@dataclass(frozen=True)
class Template:
    """How a prompt set is rendered. The defaults render the file as it is (and keep its id)."""

    shots: int | None = None  # exemplars used (None: all of them)
    shots_seed: int | None = None  # None: the first ``shots``; else a seeded choice, kept in file order
    order: int | None = None  # None: the chosen exemplars in file order; else a seeded permutation
    instruction: str = ""  # a line before every 'Q:' (the exemplars' and the question's)
    answer_instruction: str = ""  # a line before every question's first 'A:'

    @property
    def plain(self) -> bool:
        return self == Template()

    @property
    def has_instructions(self) -> bool:
        return bool(self.instruction or self.answer_instruction)

    def describe(self) -> dict:
        """What config.json records beside the prompt's id (only for a template that is not plain)."""
        return {"shots": self.shots, "shots_seed": self.shots_seed, "order": self.order,
                "instruction": self.instruction, "answer_instruction": self.answer_instruction}

    def suffix(self) -> str:
        """The part of the prompt's id this template adds: '+shots4', '+shots4@7', '+order3', '+instr@...'."""
        out = ""
        if self.shots is not None:
            out += f"+shots{self.shots}" + (f"@{self.shots_seed}" if self.shots_seed is not None else "")
        if self.order is not None:
            out += f"+order{self.order}"
        if self.has_instructions:
            out += f"+instr@{_sha(json.dumps([self.instruction, self.answer_instruction]))[:8]}"
        return out

    def validate(self) -> Template:
        if self.shots is not None and self.shots < 0:
            raise InputError(f"--shots {self.shots} must be 0 or more", fix="use --shots 2 (omit it: all)")
        for name, text in (("--instruction", self.instruction),
                           ("--answer-instruction", self.answer_instruction)):
            if "\n\n" in text or text != text.strip():
                raise InputError(f"{name} {text[:40]!r} has a blank line or surrounding whitespace",
                                 fix="give it as one line of text (a blank line ends a completion)")
        return self

    def choose(self, n: int) -> list[int]:
        """The indices of the exemplars used, in prompt order."""
        chosen = list(range(n))
        if self.shots is not None:
            chosen = (chosen[:self.shots] if self.shots_seed is None
                      else sorted(_seeded_rank("shots", self.shots_seed, n)[:self.shots]))
        if self.order is not None:
            rank = {i: r for r, i in enumerate(_seeded_rank("order", self.order, n))}
            chosen.sort(key=rank.__getitem__)
        return chosen

    def block(self, block: str) -> str:
        """One exemplar with the instruction lines added (the exemplar's own text unchanged)."""
        question, _, answers = block.partition("\nA: ")
        lines = [self.instruction, question, self.answer_instruction, f"A: {answers}"]
        return "\n".join(line for line in lines if line)

    def apply(self, prompt: PromptSet) -> PromptSet:
        """``prompt`` rendered by this template (itself when the template is plain)."""
        if self.plain:
            return prompt
        self.validate()
        source = prompt.source or prompt.prefix
        blocks = source.split("\n\n") if source else []
        if self.shots is not None and self.shots > len(blocks):
            raise InputError(f"--shots {self.shots} is more than the {len(blocks)} exemplars of prompt "
                             f"{prompt.name}", fix=f"use --shots {len(blocks)} or fewer")
        rendered = [self.block(blocks[i]) for i in self.choose(len(blocks))]
        return replace(prompt, prefix="\n\n".join(rendered), exemplars=len(rendered), source=source,
                       template=self)


@dataclass(frozen=True)
class PromptSet:
    name: str
    path: str
    prefix: str  # the exemplars as the model sees them
    exemplars: int
    tuned: str | None = None  # the id of tuned prompts the model prepends (petals_ops.tune), if any
    source: str = ""  # the file's exemplars when a template rendered ``prefix`` from them ("": prefix is)
    template: Template = field(default_factory=Template)

    @property
    def sha256(self) -> str:
        """Of the text the model sees around a question (the prefix alone without instruction lines, as
        before templates existed)."""
        if not self.template.has_instructions:
            return _sha(self.prefix)
        return _sha(json.dumps([self.prefix, self.template.instruction, self.template.answer_instruction]))

    @property
    def prompt_id(self) -> str:
        """``{file stem}@{sha256 of the file's exemplars}`` and what the template changed: the same file
        keeps the same first part, whatever is rendered from it."""
        return (f"{self.name}@{_sha(self.source or self.prefix)[:12]}{self.template.suffix()}"
                + (f"+tuned@{self.tuned}" if self.tuned else ""))

    def render(self, question: str) -> str:
        t = self.template
        lines = [t.instruction, f"Q: {question}", t.answer_instruction, "A:"]
        body = "\n".join(line for line in lines if line)
        if not self.prefix:  # 0-shot
            return body
        return f"{self.prefix}\n\n{body}"


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
        answers = block.split("\nA: ")[1:]  # several answers to one question: each must end like the last
        for j, answer in enumerate(answers[:-1], start=1):
            if not ANSWER_END_RE.search(answer):
                raise InputError(f"--prompt-file {path}: exemplar {i}, answer {j} of {len(answers)} does not "
                                 f"end with 'The answer is N.' ({answer[-60:]!r})",
                                 fix="end every 'A: ...' line of an exemplar with 'The answer is N.'")
    return PromptSet(name=path.stem, path=str(path.resolve()), prefix=prefix, exemplars=len(blocks))
