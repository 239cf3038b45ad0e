"""K: relearning attack (determinism, no knowledge from nothing), probes, attack split, certify integration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mansu_audit.recovery import (AttackConfig, attack_split, probe_layers, recovery_statistics, relearn)

SMALL = AttackConfig(steps=4, lr=1e-3, batch_size=8, eval_every=2, seed=7)


@pytest.fixture(scope="module")
def tiny(ref_tokenizer):
    from conftest import tiny_llama

    return tiny_llama(len(ref_tokenizer), seed=3)


def test_attack_split_uses_forget_attack_or_a_recorded_seeded_split(bundle):
    sp = attack_split(bundle)
    assert sp.source == "forget_attack" and sp.heldout == bundle.split("forget_eval")
    assert not {it.id for it in sp.attack} & {it.id for it in sp.heldout}
    from dataclasses import replace

    old = replace(bundle, mcq={k: v for k, v in bundle.mcq.items() if k != "forget_attack"})
    a, b = attack_split(old, 0.1, seed=5), attack_split(old, 0.1, seed=5)
    assert a.attack == b.attack and len(a.attack) == 42 and len(a.heldout) == 420 - 42
    assert {it.id for it in a.attack} != {it.id for it in attack_split(old, 0.1, seed=6).attack}
    assert not {it.id for it in a.attack} & {it.id for it in a.heldout}
    rec = a.to_dict()
    assert rec["seed"] == 5 and rec["fraction"] == 0.1 and rec["attack_ids"] == [it.id for it in a.attack]


def test_attack_is_deterministic_and_leaves_the_model_untouched(tiny, ref_tokenizer, bundle):
    attack, heldout = bundle.split("forget_attack")[:16], bundle.split("forget_eval")[:24]
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    r1 = relearn(tiny, ref_tokenizer, attack, heldout, SMALL)
    r2 = relearn(tiny, ref_tokenizer, attack, heldout, SMALL)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert r1.losses == r2.losses and len(r1.losses) == 4
    assert np.array_equal(r1.after.predictions, r2.after.predictions)
    assert np.array_equal(r1.after.logprobs, r2.after.logprobs)
    assert [s for s, _ in r1.curve] == [0, 2, 4]
    r3 = relearn(tiny, ref_tokenizer, attack, heldout, AttackConfig(**{**SMALL.to_dict(), "seed": 8}))
    assert r3.losses != r1.losses  # the seed drives batches and choice orders
    assert not np.array_equal(r1.after.logprobs, r1.before.logprobs)  # the attack changed the copy
    back = type(r1).from_dict(r1.to_dict())
    assert back.curve == r1.curve and np.array_equal(back.after.predictions, r1.after.predictions)


def test_attack_on_a_model_that_knows_nothing_stays_near_chance(tiny, ref_tokenizer, bundle):
    """Fine-tuning a random model on other agents' facts cannot teach the held-out facts."""
    heldout = bundle.split("forget_eval")[:80]
    cfg = AttackConfig(steps=12, lr=3e-3, batch_size=8, eval_every=12, seed=0)
    res = relearn(tiny, ref_tokenizer, bundle.split("forget_attack")[:48], heldout, cfg)
    assert np.mean(res.losses[-3:]) < np.mean(res.losses[:3])  # it did fit its attack items
    assert abs(res.after.accuracy - 0.25) <= 0.15, res.curve
    stats = recovery_statistics(np.ones(80, bool), res.before.correct, res.after.correct)
    assert stats["acc_after"].point == pytest.approx(res.after.accuracy)
    assert stats["recovered_fraction"].high < 0.25


def test_probe_reports_a_layer_curve(tiny, ref_tokenizer, bundle):
    res = probe_layers(tiny, ref_tokenizer, bundle.split("forget_attack")[:40], bundle.split("forget_eval")[:40])
    assert len(res.accuracy) == tiny.config.num_hidden_layers + 1
    assert all(0 <= a <= 1 for a in res.accuracy) and res.chance == 0.25
    assert res.to_dict()["max"] == max(res.accuracy)
    assert max(res.accuracy) <= 0.55  # a random model has no knowledge to read (40 items: loose bound)


def test_probe_reads_a_planted_answer_signal(ref_tokenizer, bundle):
    """A module whose residual carries the right choice index in one layer: the probe finds it there."""
    from types import SimpleNamespace

    items = list(bundle.split("forget_attack")[:80]) + list(bundle.split("forget_eval")[:80])
    answer_of = {it.question: it.answer for it in items}

    class Planted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **_):
            g = torch.Generator().manual_seed(0)
            n, t = input_ids.shape
            noise = 0.3 * torch.randn(n, t, 8, generator=g)
            signal = torch.zeros(n, t, 8)
            for b, row in enumerate(input_ids):
                q = ref_tokenizer.decode(row[: int(attention_mask[b].sum())].tolist(),
                                         skip_special_tokens=True).split("\n")[0].strip()
                signal[b, :, answer_of[q]] = 3.0
            return SimpleNamespace(logits=torch.zeros(n, t, 4), hidden_states=(noise, noise + signal))

    res = probe_layers(Planted(), ref_tokenizer, items[:80], items[80:])
    assert res.accuracy[1] == 1.0 and res.accuracy[0] < 0.5 and res.best_layer == 1


def test_certify_runs_k_and_consistency_and_keeps_seconds_out_of_the_body(tmp_path, ref_tokenizer, bundle):
    """certify(tiny, tiny) with a tiny budget: K statistics, curves, probes, consistency in the body;
    stage seconds only in run.json; `relearn='skip'` leaves K out."""
    import json

    from mansu_audit.cache import ResultCache
    from mansu_audit.certify import certify
    from mansu_audit.loading import model_from_objects
    from mansu_audit.policy import Policy
    from conftest import tiny_llama

    small = bundle.__class__(bundle.name, bundle.root,
                             {**bundle.mcq, "forget_eval": bundle.split("forget_eval")[:60],
                              "retain_eval": bundle.split("retain_eval")[:60],
                              "forget_attack": bundle.split("forget_attack")[:16]},
                             bundle.corpus, bundle.files, bundle.manifest)
    base = model_from_objects(tiny_llama(len(ref_tokenizer), seed=1), ref_tokenizer, "tiny-base")
    cand = model_from_objects(tiny_llama(len(ref_tokenizer), seed=2), ref_tokenizer, "tiny-cand")
    policy = Policy(bootstrap_replicates=200, relearn_steps=2, relearn_lr=1e-3)
    cache = ResultCache(tmp_path / "cache")
    cert = certify(base, cand, small, quantizers=(), policy=policy, cad=None, cache=cache, out=tmp_path / "out",
                   chat_template="off")
    body = cert.body
    assert "K" in body["desiderata"] and "relearn_heldout" in body["statistics"]
    rec = body["recovery"]
    assert rec["split"]["source"] == "forget_attack" and rec["attack"]["steps"] == 2
    assert set(rec["models"]) == {"base", "candidate"}
    assert len(rec["models"]["candidate"]["probe"]["accuracy"]) == 3
    assert [c["step"] for c in rec["models"]["candidate"]["relearning"]["curve"]] == [0, 2]
    cons = body["consistency"]
    assert set(cons["models"]["base"]) == {"forget_eval", "retain_eval"}
    assert "seconds" not in json.dumps(body)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "relearn[candidate]" in run["stage_seconds"] and "probe[base]" in run["stage_seconds"]
    again = certify(base, cand, small, quantizers=(), policy=policy, cad=None, cache=cache, chat_template="off")
    assert again.body_sha256 == cert.body_sha256  # cached stages give identical bytes
    skipped = certify(base, cand, small, quantizers=(), policy=policy, cad=None, cache=cache, chat_template="off",
                      relearn="skip", consistency="skip")
    assert "K" not in skipped.body["desiderata"] and "recovery" not in skipped.body
    assert "consistency" not in skipped.body


@pytest.mark.slow
def test_k_on_the_bundled_reference_against_itself(reference, bundle, tmp_path):
    """The attack at the policy's budget on the bundled reference vs itself: nothing was forgotten,
    so K's denominator is ~0 (K INCONCLUSIVE, never PASS) and the attack does not wipe its knowledge."""
    from mansu_audit.cache import NoCache
    from mansu_audit.certify import certify

    cert = certify(reference, reference, bundle, quantizers=(), cad=None, cache=NoCache(), consistency="skip",
                   chat_template="off")
    k = cert.body["desiderata"]["K"]
    assert k["verdict"] != "PASS"
    stats = cert.body["statistics"]["relearn_heldout"]
    assert stats["forgotten"]["point"] == 0
    curve = cert.body["recovery"]["models"]["candidate"]["relearning"]["curve"]
    assert curve[0]["accuracy"] == pytest.approx(stats["acc_base"]["point"])
    assert cert.body["recovery"]["models"]["base"] == cert.body["recovery"]["models"]["candidate"]


def test_choice_order_as_given_trains_on_the_stated_items_and_redrawn_reorders(tiny, ref_tokenizer, bundle):
    """"as-given" (the policy default) fine-tunes on the attack items as the bundle states them: with the
    whole attack set in one batch its first loss is the model's NLL of the stated right letters;
    "redrawn" shows other choice orders (another loss), and the policy key selects between them."""
    from mansu_audit.policy import Policy
    from mansu_audit.prompts import pad_token_id
    from mansu_audit.recovery import _answer_sequences, _batch_loss

    attack, heldout = bundle.split("forget_attack")[:12], bundle.split("forget_eval")[:8]
    cfg = AttackConfig(steps=1, lr=1e-3, batch_size=12, eval_every=1, seed=7)
    assert cfg.choice_order == "as-given" == Policy().relearn_choice_order
    with torch.no_grad():
        stated = float(_batch_loss(tiny, _answer_sequences(ref_tokenizer, attack, False, None),
                                   pad_token_id(ref_tokenizer), torch.device("cpu")))
    given = relearn(tiny, ref_tokenizer, attack, heldout, cfg)
    redrawn = relearn(tiny, ref_tokenizer, attack, heldout, AttackConfig(**{**cfg.to_dict(), "choice_order": "redrawn"}))
    assert given.losses[0] == pytest.approx(stated, rel=1e-5)
    assert redrawn.losses[0] != pytest.approx(stated, rel=1e-5)
    assert AttackConfig.from_policy(Policy(relearn_choice_order="redrawn")).choice_order == "redrawn"
    assert given.config.to_dict()["choice_order"] == "as-given"
    with pytest.raises(ValueError, match="choice_order"):
        AttackConfig(choice_order="shuffled")


def test_policy_file_sets_the_choice_order_and_refuses_others(tmp_path):
    from mansu_audit.errors import InputError
    from mansu_audit.policy import load_policy

    p = tmp_path / "p.yaml"
    p.write_text("relearn_choice_order: redrawn\n")
    assert load_policy(p).relearn_choice_order == "redrawn"
    p.write_text("relearn_choice_order: shuffled\n")
    with pytest.raises(InputError, match="relearn_choice_order"):
        load_policy(p)
