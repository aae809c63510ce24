"""Stage 2's per-epoch validation (`stage2.validate`): one pass over the emotion prompts gives both the greedy
answers (those generation gives) and the teacher-forced loss of the gold answers (that of the training layout),
and the loss is the token-weighted mean over every validation sample."""

import numpy as np
import torch

from esva.data.instructions import eval_samples
from esva.models.llm import greedy_generate, greedy_generate_scored
from esva.train import stage2
from tests.models.test_stage2 import TUNE, model, world  # noqa: F401 - fixtures


def _loss_one_by_one(m, by_id, samples):
    total = count = 0.0
    with torch.no_grad():
        for s in samples:  # one at a time: no padding at all
            lo, n = m.loss([by_id[s.clip_id]], [s], grad=False)
            total, count = total + float(lo) * n, count + n
    return total, count


def test_validate_gives_the_answers_and_the_loss_of_the_separate_passes(world, model):  # noqa: F811
    df, data = world["df"], world["data"]
    by_id = {c.clip_id: c for c in data.clips}
    emotion = eval_samples(df, "emotion")
    reason = [s for s in eval_samples(df, "reason") if s.target]
    plain = model.generate([by_id[s.clip_id] for s in emotion], emotion, 5, 6)  # every row generated, as before
    loss, answers = stage2.validate(model, by_id, emotion, reason, 5, 6)
    assert answers == plain and len(answers) == len(emotion)
    total, count = _loss_one_by_one(model, by_id, emotion + reason)
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
    assert not model.llm.training and not model.projector.training


def test_scored_generation_scores_answers_of_any_length_and_generates_the_same(world, model):  # noqa: F811
    df, data = world["df"], world["data"]
    by_id = {c.clip_id: c for c in data.clips}
    samples = eval_samples(df.iloc[:5], "reason")  # long answers of different lengths (padding between them)
    clips = [by_id[s.clip_id] for s in samples]
    gold = []
    for s in samples:
        e = model.codec.encode(s, with_answer=True)
        gold.append(e.ids[e.n_prompt:])
    gold[1] = gold[1][:1]  # a one-token answer beside the long ones
    gold[2] = []  # and one with nothing to score
    model.llm.eval()
    model.projector.eval()
    with torch.no_grad():
        b = model.inputs(clips, samples, with_answer=False)
        ids, nll, n = greedy_generate_scored(model.llm, b["inputs_embeds"], b["attention_mask"], 7,
                                             model.codec.eos_id, model.codec.pad_id, gold)
        assert ids == greedy_generate(model.llm, b["inputs_embeds"], b["attention_mask"], 7, model.codec.eos_id,
                                      model.codec.pad_id)
        # the reference: each prompt + its answer as one teacher-forced sequence
        ref = 0.0
        for i, s in enumerate(samples):
            if not gold[i]:
                continue
            e = model.codec.encode(s, with_answer=False)
            seq = e.ids + gold[i]
            one = model.codec.collate([type(e)(seq, e.kinds + [e.kinds[-1]] * len(gold[i]), e.n_prompt, False, False)])
            video, feature = model.projector(model.streams(clips[i:i + 1]))
            emb = stage2.splice(model.llm.get_input_embeddings(), one["input_ids"], one["kinds"], video, feature)
            lo = model.llm(inputs_embeds=emb, attention_mask=one["attention_mask"], position_ids=one["position_ids"]).logits
            ref += float(torch.nn.functional.cross_entropy(lo[0, :-1], one["labels"][0, 1:], ignore_index=-100,
                                                           reduction="sum"))
    assert n == sum(len(g) for g in gold)
    np.testing.assert_allclose(nll, ref, rtol=1e-5)
