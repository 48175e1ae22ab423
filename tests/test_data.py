"""Examples -> score requests -> option scores and losses."""

import numpy as np
import pytest

from prge_gguf.data import (
    Example,
    decode_size,
    fit_length,
    parse_label_words,
    records_to_examples,
    tokenize_example,
)
from prge_gguf.scoring import TokenizedExample, example_loss, option_scores
from prge_gguf.tasks import builtin_task


class WordTokenizer:
    """Each whitespace word is one token id (stable per word); BOS = 1 when add_special."""

    def __init__(self):
        self.ids = {}

    def tokenize(self, text, add_special):
        toks = [self.ids.setdefault(w, len(self.ids) + 10) for w in text.split()]
        return [1, *toks] if add_special else toks


def test_single_token_options_share_one_sequence():
    tok = WordTokenizer()
    ex = tokenize_example(tok, Example("the film It was", (" terrible", " great"), 1))
    (req,) = ex.requests
    assert req.tokens[0] == 1 and req.positions == (len(req.tokens) - 1,)
    assert req.candidates == ((tok.ids["terrible"], tok.ids["great"]),)
    scores = option_scores(ex, [[np.log(np.array([0.2, 0.6]))]])
    np.testing.assert_allclose(scores, np.log([0.2, 0.6]))


def test_multi_token_options_sum_their_tokens():
    tok = WordTokenizer()
    ex = tokenize_example(tok, Example("premise", (" not at all", " yes"), 0))
    assert len(ex.requests) == 2
    r0, r1 = ex.requests
    assert r0.positions == (1, 2, 3) and len(r0.tokens) == 5
    assert r1.positions == (1,) and r1.candidates == ((tok.ids["yes"],),)
    results = [[np.array([-1.0]), np.array([-2.0]), np.array([-0.5])], [np.array([-4.0])]]
    np.testing.assert_allclose(option_scores(ex, results), [-3.5, -4.0])


def test_losses():
    scores = np.log(np.array([0.1, 0.3]))
    # label loss renormalises over the options; vocab loss is the full-vocabulary NLL.
    ex = TokenizedExample((), (), n_options=2, label=1)
    assert example_loss(ex, scores, "label") == pytest.approx(-np.log(0.75))
    assert example_loss(ex, scores, "vocab") == pytest.approx(-np.log(0.3))
    lm = TokenizedExample((), (), n_options=1, label=0, n_scored=4)
    assert example_loss(lm, np.array([-2.0]), "label") == pytest.approx(0.5)  # mean token NLL


def test_label_words_parsing():
    assert parse_label_words("0=terrible, 1=great") == {"0": "terrible", "1": "great"}
    assert parse_label_words("no,yes") == {"0": "no", "1": "yes"}


def test_records_render_template_and_labels():
    recs = [("f:1", {"text": " nice ", "label": 1}), ("f:2", {"text": "bad", "label": False})]
    exs = records_to_examples(recs, "{text} It was", {"1": "great", "false": "terrible"})
    assert exs[0] == Example("nice It was", (" great", " terrible"), 0, "f:1")
    assert exs[1].label == 1


def test_builtin_sst2_ships_its_data():
    task = builtin_task("sst2")
    train, dev = task.examples(task.train_file), task.examples(task.dev_file)
    assert (len(train), len(dev)) == (1000, 872)
    assert dev[0].options == (" negative", " positive")
    assert dev[0].context.startswith("Review: ") and dev[0].context.endswith("\nSentiment:")
    assert 0.4 < np.mean([e.label for e in dev]) < 0.6


def test_fit_length_keeps_the_answer_end_of_a_choice():
    tok = WordTokenizer()
    ex = tokenize_example(tok, Example("a b c d e f It was", (" terrible", " great"), 1, "f:3"))
    cut = fit_length(ex, 5)
    (req,) = cut.requests
    assert len(req.tokens) == 5 and req.tokens[0] == 1  # BOS kept
    assert req.tokens[-2:] == ex.requests[0].tokens[-2:]  # the end of the context kept
    assert req.positions == (4,) and req.candidates == ex.requests[0].candidates


def test_fit_length_cuts_language_modelling_scores_past_the_end():
    from prge_gguf.engine import ScoreRequest

    req = ScoreRequest(tuple(range(10)), tuple(range(2, 9)), tuple((t,) for t in range(3, 10)))
    ex = TokenizedExample((req,), (tuple((0,) for _ in range(7)),), 1, 0, n_scored=7, place="f:1")
    cut = fit_length(ex, 6)
    assert cut.requests[0].tokens == tuple(range(6))
    assert cut.requests[0].positions == (2, 3, 4) and cut.n_scored == 3


def _examples_of_lengths(*lengths):
    from prge_gguf.engine import ScoreRequest

    return [TokenizedExample((ScoreRequest(tuple(range(n)), (n - 1,), ((0, 1),)),), (((0, 1),),), 2, 0)
            for n in lengths]


def test_decode_size_fits_a_typical_batch_the_longest_sequence_and_the_cap():
    short = _examples_of_lengths(10, 14, 12, 12)  # mean 12: 1.25 * 16 * 12 = 240 -> 256
    assert decode_size(short, [], 16, 1024) == 256
    assert decode_size(short, [], 64, 1024) == 960
    assert decode_size(short, [], 128, 1024) == 1024  # capped
    assert decode_size(short, _examples_of_lengths(300), 16, 1024) == 300  # a held-out sequence
    assert decode_size(_examples_of_lengths(2000), [], 1, 1024) == 2000  # never below the longest
    assert decode_size([], [], 16, 1024) == 1024


def test_template_escapes():
    from prge_gguf.data import unescape_template

    assert unescape_template(r"Review: {text}\nSentiment:\t") == "Review: {text}\nSentiment:\t"
    assert unescape_template(r"C:\\new {text}") == r"C:\new {text}"  # \\ keeps a backslash before n
    assert unescape_template("a\nb") == "a\nb"  # real newlines pass through
