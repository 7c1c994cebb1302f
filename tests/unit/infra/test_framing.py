"""framing.py: the frame's check and the retry of a lost answer (pure, no engine)."""

from __future__ import annotations

import subprocess

import pytest

from pgrunbook.infra.container import DropSeam
from pgrunbook.infra.framing import Frame, LostAnswer, answered, lost_answer, unframe
from pgrunbook.infra.postgres import records, split_answers


def framed_locally(command: list[str], stdin: bytes | None = None) -> tuple[Frame, bytes, int]:
    """The frame's own shell line, run by the host's sh (the same POSIX sh as in the container)."""
    frame = Frame()
    done = subprocess.run(frame.argv(command), input=stdin, capture_output=True, check=False)
    return frame, done.stdout, done.returncode


@pytest.mark.parametrize("output", [b"", b"42\n", b"no newline", b"\x00\x1e\x1f binary\n\n",
                                    b"x" * 100_000])
def test_the_answer_between_the_marks_is_exactly_the_commands_output(output):
    frame, stdout, code = framed_locally(["sh", "-c", 'cat; exit 3'], stdin=output)
    answer, found = unframe(frame, stdout)
    assert (answer, found.complete, found.exit_code, code) == (output, True, 3, 3)


def test_the_answer_is_the_same_in_any_chunks():
    frame, stdout, _ = framed_locally(["printf", "a\nb\n"])
    for size in (1, 2, 7, 64):
        again = Frame(nonce=frame.nonce)
        got = bytearray()
        again.deliver = got.extend
        for start in range(0, len(stdout), size):
            again.feed(stdout[start:start + size])
        assert again.finish().complete and bytes(got) == b"a\nb\n", size


def test_a_lost_output_a_lost_head_a_lost_tail_and_a_foreign_frame_are_lost_answers():
    frame, stdout, _ = framed_locally(["printf", "1\x1e2\n"])
    other, foreign, _ = framed_locally(["printf", "1\x1e2\n"])
    for broken in (b"", stdout[5:], stdout[:-3], stdout[: len(frame.begin)], foreign):
        answer, found = unframe(Frame(nonce=frame.nonce), broken)
        assert not found.complete, broken
        assert answer == b"" or not found.complete


def test_a_missing_command_is_said_by_the_frame_not_mistaken_for_its_exit_code():
    frame, stdout, code = framed_locally(["pgrunbook-no-such-tool", "--version"])
    assert code == 127 and unframe(frame, stdout)[1].missing
    frame, stdout, code = framed_locally(["sh", "-c", "exit 127"])
    _, found = unframe(frame, stdout)
    assert code == 127 and found.complete and not found.missing and found.exit_code == 127


def test_answered_asks_again_after_a_lost_answer_then_says_it_in_one_line():
    answers = iter([lost_answer("db", "psql"), lost_answer("db", "psql"), "42"])
    pauses = []

    def ask():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert answered(ask, pause=pauses.append) == "42"
    assert len(pauses) == 2 and pauses == sorted(pauses)
    with pytest.raises(LostAnswer) as raised:
        answered(lambda: (_ for _ in ()).throw(lost_answer("db", "psql")), tries=3, pause=pauses.append)
    assert "3 回とも" in raised.value.message and "db の psql" in raised.value.message
    assert "再実行" in raised.value.hint


def test_answered_does_not_retry_other_failures():
    calls = []

    def ask():
        calls.append(1)
        raise ValueError("not a lost answer")

    with pytest.raises(ValueError):
        answered(ask, pause=lambda _s: None)
    assert calls == [1]


def test_the_seam_is_off_unless_set_and_aims_by_pattern_and_count(tmp_path):
    assert DropSeam({}).choose(["psql", "-c", "SELECT 1"]) is None
    log = tmp_path / "drops.log"
    seam = DropSeam({"PGRUNBOOK_TEST_DROP_MATCH": "pg_prepared_xacts", "PGRUNBOOK_TEST_DROP_NTH": "2",
                     "PGRUNBOOK_TEST_DROP_LOG": str(log)})
    chosen = [seam.choose(["psql", "-c", sql]) is not None
              for sql in ("SELECT 1", "SELECT count(*) FROM pg_prepared_xacts", "SELECT 2",
                          "SELECT gid FROM pg_prepared_xacts", "SELECT * FROM pg_prepared_xacts")]
    assert chosen == [False, False, False, True, False]
    assert len(log.read_text().splitlines()) == 1
    always = DropSeam({"PGRUNBOOK_TEST_DROP_OUTPUT": "1"})
    assert all(always.choose(["df"]) for _ in range(20))
    sometimes = DropSeam({"PGRUNBOOK_TEST_DROP_OUTPUT": "0.1", "PGRUNBOOK_TEST_DROP_SEED": "7"})
    dropped = sum(sometimes.choose(["df"]) is not None for _ in range(2000))
    assert 120 < dropped < 280


@pytest.mark.parametrize(("kind", "expected"), [("all", b""), ("head:3", b"defgh"), ("tail:3", b"abcde"),
                                                ("after:3", b"abc")])
def test_the_seam_drops_all_or_the_head_or_the_tail_of_stdout(kind, expected):
    seam = DropSeam({"PGRUNBOOK_TEST_DROP_OUTPUT": "1", "PGRUNBOOK_TEST_DROP_KIND": kind})
    dropping = seam.choose(["pg_dump"])
    out, err = bytearray(), bytearray()
    stdout, stderr = dropping.wrap(out.extend, err.extend)
    for chunk in (b"ab", b"cdef", b"gh"):
        stdout(chunk)
    stderr(b"warning")
    dropping.finish()
    assert bytes(out) == expected
    assert bytes(err) == (b"" if kind == "all" else b"warning")


def test_the_answers_of_a_batch_are_split_by_their_marks_with_their_exit_codes():
    stdout = b"1\x1e\n\nn0nce:1:0\n\nn0nce:2:0\n\nn0nce:3:1\n"
    stderr = "\nn0nce:1\n\nn0nce:2\nERROR: nope\n\nn0nce:3\n"
    assert split_answers(stdout, stderr, "n0nce", 3) == [
        (b"1\x1e\n", "", 0), (b"", "", 0), (b"", "ERROR: nope\n", 1)]
    assert records(b"1\x1fa\x1e2\x1fb\n") == [["1", "a"], ["2", "b"]]


@pytest.mark.parametrize("stdout", [
    b"1\n\nn0nce:1:0\n",  # an answer short: the batch's end was lost
    b"1\n\nn0nce:2:0\n\nn0nce:1:0\n",  # out of order
    b"1\n\nn0nce:1:0\n\nn0nce:2:0\nmore",  # something after the last mark
    b"1\n\nother:1:0\n\nother:2:0\n",  # another call's marks
    b"",
])
def test_a_batch_with_a_mark_missing_or_out_of_place_is_a_lost_answer_never_a_shorter_one(stdout):
    assert split_answers(stdout, "", "n0nce", 2) is None
