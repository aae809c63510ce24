"""Stage 2 on a tiny world: prompt layout, splicing (training == inference), label masking,
truncation, pooling, answer parsing, the tuning loop, and the adapter's save/load round trip."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from esva import LABELS
from esva.config import AlignConfig, LlmConfig, MsfeConfig, TrainConfig, TuneConfig
from esva.data.instructions import (Instruction, eval_samples, instruction_text, parse_label, parse_ov,
                                    training_samples)
from esva.data.manifest import to_frame, write_manifest
from esva.models.fusion import FusionClassifier
from esva.models.llm import FEATURE, TEXT, VIDEO, Encoded, LlmError, PromptCodec, greedy_generate, splice
from esva.models.projector import pool_tokens
from esva.train.stage1 import Clip, FeatureData
from esva.train import stage2

ROOT = Path(__file__).resolve().parents[2]
DIM = {"hubert": 16, "mae": 12, "videomae": 10, "eva": 8}
PATCHES = 16  # EVA patch tokens per clip (the tiny EVA: 56 px, patch 14) -> 4 LLM tokens
RATES = {"hubert": 50.0, "mae": 25.0, "videomae": 12.5, "eva": 0.0}
TUNE = TuneConfig(epochs=2, batch_size=4, grad_accum=2, lora_r=4, lora_alpha=8, audio_tokens=3, video_tokens=2,
                  max_new_tokens=24, answer_tokens=24, eval_batch_size=5, tasks={"emotion": 1.0, "reason": 0.5, "ov": 0.5})
WORDS = {"neutral": "calm", "angry": "furious", "happy": "joyful", "sad": "lonely", "worried": "anxious",
         "surprise": "astonished"}


def _manifest(n=12):
    rows = []
    for i in range(n):
        lab = LABELS[i % len(LABELS)]
        split = "train" if i < 8 else ("val" if i < 10 else "test")
        rows.append({"clip_id": f"c{i:02d}", "video_path": f"v{i}.mp4", "root": "r", "split": split, "label": lab,
                     "transcript": " ".join(["we talked about the weather today"] * (1 + i % 3)),
                     "reason": f"The voice is {'loud' if i % 2 else 'soft'} and the face looks {WORDS[lab]}.",
                     "ov_labels": [lab, WORDS[lab]], "dataset": "synthetic"})
    return to_frame(rows)


def _features(df, seed=0):
    rng = np.random.default_rng(seed)
    clips = []
    for row in df.itertuples():
        ta = int(rng.integers(60, 90))
        feats = {"hubert": rng.normal(0, 1, (ta, DIM["hubert"])).astype(np.float32),
                 "mae": rng.normal(0, 1, (ta // 2, DIM["mae"])).astype(np.float32),
                 "videomae": rng.normal(0, 1, (ta // 4, DIM["videomae"])).astype(np.float32),
                 "eva": rng.normal(0, 1, DIM["eva"]).astype(np.float32),
                 "eva_patches": rng.normal(0, 1, (PATCHES, DIM["eva"])).astype(np.float32),
                 "eva_cls": rng.normal(0, 1, DIM["eva"]).astype(np.float32)}
        clips.append(Clip(row.clip_id, LABELS.index(row.label), row.split, None, feats))
    return FeatureData(clips, dict(DIM), dict(RATES), "synthetic")


def _save_stage1(path: Path, seed=0):
    from safetensors.torch import save_file

    use = ("hubert", "mae", "videomae", "eva")
    cfgs = {"msfe": MsfeConfig(hidden=8), "align": AlignConfig(dim=8, max_shift=2, window=2),
            "train": TrainConfig(hidden=16)}
    torch.manual_seed(seed)
    model = FusionClassifier(DIM, RATES, use, len(LABELS), cfgs["msfe"], cfgs["align"], cfgs["train"])
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    cfg = {"use": list(use), "labels": list(LABELS), "dims": DIM, "rates": RATES,
           **{k: v.model_dump(mode="json") for k, v in cfgs.items()}}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def _lm(tmp: Path, df, hidden=32):
    from pipeline.stages import lm

    write_manifest(df, tmp / f"manifest_{hidden}.parquet")
    cfg = LlmConfig(vocab_size=320, hidden_size=hidden, layers=1, heads=2, intermediate_size=64, max_length=256,
                    epochs=1, block=32, batch_size=8)
    lm.run(cfg, tmp / f"manifest_{hidden}.parquet", tmp / f"llm{hidden}", metrics_dir=None)
    return tmp / f"llm{hidden}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage2")
    df = _manifest()
    return {"tmp": tmp, "df": df, "data": _features(df), "stage1": _save_stage1(tmp / "stage1"), "lm": _lm(tmp, df)}


@pytest.fixture(scope="module")
def model(world):
    torch.manual_seed(0)
    return stage2.build(world["stage1"], world["lm"], world["data"], TUNE)


# ----------------------------------------------------------------------------- parsing and data

def test_parse_label_counts_answers_outside_the_label_set():
    assert parse_label("happy") == "happy"
    assert parse_label("Happy.") == "happy"
    assert parse_label("sad, because the voice falls") == "sad"
    assert parse_label("the person looks worried") == "worried"
    assert parse_label("surprised") is None  # not silently mapped to "surprise"
    assert parse_label("joyful") is None
    assert parse_label("") is None
    assert parse_label("it is either angry or sad") is None  # two different labels, none first
    assert parse_ov("Happy, joyful , happy;excited\n") == ["happy", "joyful", "excited"]
    assert parse_ov("") == []


def test_instructions_follow_the_task_mix_and_are_seeded():
    df = _manifest()
    train = df[df.split == "train"]
    a = training_samples(train, {"emotion": 1.0, "reason": 0.5, "ov": 0.0}, seed=3, epoch=1)
    b = training_samples(train, {"emotion": 1.0, "reason": 0.5, "ov": 0.0}, seed=3, epoch=1)
    assert a == b
    tasks = [s.task for s in a]
    assert tasks.count("emotion") == len(train) and "ov" not in tasks
    many = [s.task for e in range(50) for s in training_samples(train, {"emotion": 0.0, "reason": 0.5}, 0, e)]
    assert abs(many.count("reason") / (50 * len(train)) - 0.5) < 0.08
    emo = next(s for s in a if s.task == "emotion")
    assert emo.target in LABELS and emo.instruction == (  # Emotion-LLaMA's [emotion] instruction, nine labels
        "Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, "
        "surprise, fear, contempt, doubt.")
    ov = eval_samples(train, "ov")[0]
    assert ov.target == "neutral, calm"
    assert len({instruction_text("reason", i) for i in range(8)}) == 5  # Emotion-LLaMA's five reason phrasings
    reason = next(s for s in a if s.task == "reason")  # targets normalised as Emotion-LLaMA's blip_caption
    assert reason.target == reason.target.lower() and "." not in reason.target
    # reason_v2 (fine-grained) only where the manifest has `reason_fine`
    assert not [s for s in training_samples(train, {"reason_v2": 1.0}, 0, 1)]
    fine = train.assign(reason_fine="The Voice: trembling; the FACE (eyes) looks down!")
    v2 = training_samples(fine, {"reason_v2": 1.0}, 0, 1)
    assert len(v2) == len(train) and v2[0].target == "the voice trembling the face eyes looks down"


def test_pool_tokens_by_hand_and_padding_never_enters():
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1).repeat(2, 1, 1)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    out = pool_tokens(x, mask, 3)[..., 0]
    # clip 0: 10 frames -> [0,4) [3,7) [6,10)
    assert torch.allclose(out[0], torch.tensor([1.5, 4.5, 7.5]))
    # clip 1: 6 valid frames -> [0,2) [2,4) [4,6)
    assert torch.allclose(out[1], torch.tensor([0.5, 2.5, 4.5]))
    x2 = x.clone()
    x2[1, 6:] = 1e6
    assert torch.equal(pool_tokens(x2, mask, 3), pool_tokens(x, mask, 3))
    # valid frames that start late (the aligned video when it leads the audio): ranks, not positions
    late = torch.zeros(1, 8, dtype=torch.bool)
    late[0, 2:] = True
    assert torch.allclose(pool_tokens(x[:1, :8], late, 3)[0, :, 0], torch.tensor([2.5, 4.5, 6.5]))
    # more tokens than frames: every token still averages at least one frame
    short = pool_tokens(x[:, :2], torch.ones(2, 2, dtype=torch.bool), 4)[0, :, 0]
    assert torch.allclose(short, torch.tensor([0.0, 0.0, 1.0, 1.0]))


# ----------------------------------------------------------------------------- layout, masking, truncation

def test_labels_are_masked_on_prompt_and_modality_tokens(model):
    codec = model.codec
    ins = Instruction("c00", "emotion", "we talked", instruction_text("emotion", 0), "sad")
    enc = codec.encode(ins, with_answer=True)
    batch = codec.collate([enc, codec.encode(Instruction("c01", "reason", "", "why?", "The voice is soft."), True)])
    labels, kinds = batch["labels"], batch["kinds"]
    answer = model.tokenizer(" sad", add_special_tokens=False)["input_ids"] + [model.tokenizer.eos_token_id]
    row = labels[0][labels[0] != -100].tolist()
    assert row == answer
    assert bool((labels[kinds != TEXT] == -100).all())  # never on modality tokens
    # esva layout: 4 EVA patch tokens + the aligned video's; MAE, VideoMAE, the MSFE tokens, EVA CLS
    assert int((kinds[0] == VIDEO).sum()) == PATCHES // 4 + TUNE.video_tokens
    assert int((kinds[0] == FEATURE).sum()) == 3 + TUNE.audio_tokens
    # left padding: the shorter row starts with padding, masked out, and positions count from its first token
    short = int(batch["attention_mask"].sum(1).argmin())
    first = int(batch["attention_mask"][short].argmax())
    assert first > 0 and int(batch["position_ids"][short, first]) == 0 and bool((labels[short, :first] == -100).all())


def test_long_transcripts_are_cut_never_the_modality_tokens(model):
    nv, nf = model.projector.n_video, model.projector.n_feature
    small = PromptCodec(model.tokenizer, nv, nf, max_length=200, max_new_tokens=24)
    long = Instruction("c00", "emotion", "the weather " * 200, instruction_text("emotion", 0), "sad")
    enc = small.encode(long, with_answer=False)
    assert enc.transcript_cut and len(enc.ids) == 200 - 24
    assert enc.kinds.count(VIDEO) == nv and enc.kinds.count(FEATURE) == nf
    assert small.encode(long, with_answer=True).ids[:enc.n_prompt] == enc.ids  # the same cut in training
    tiny = PromptCodec(model.tokenizer, nv, nf, max_length=100, max_new_tokens=24)
    with pytest.raises(LlmError, match="more than the context of 100"):
        tiny.encode(long, with_answer=False)


def test_splicing_is_identical_in_training_and_inference(world, model):
    """The same prompt gives the same embeddings and the same next-token logits whether it is laid out
    for training (with its answer) or for generation; and teacher forcing the generated answer in the
    training layout predicts exactly the generated tokens."""
    df, data = world["df"], world["data"]
    by_id = {c.clip_id: c for c in data.clips}
    samples = eval_samples(df.iloc[:4], "reason")
    clips = [by_id[s.clip_id] for s in samples]
    model.llm.eval()
    model.projector.eval()
    with torch.no_grad():
        infer = model.inputs(clips, samples, with_answer=False)
        train = model.inputs(clips, samples, with_answer=True)  # the same prompts with their answers
        lo_i = model.llm(inputs_embeds=infer["inputs_embeds"], attention_mask=infer["attention_mask"],
                         position_ids=infer["position_ids"]).logits
        lo_t = model.llm(inputs_embeds=train["inputs_embeds"], attention_mask=train["attention_mask"],
                         position_ids=train["position_ids"]).logits
        for i, s in enumerate(samples):
            mi, mt = infer["attention_mask"][i].bool(), train["attention_mask"][i].bool()
            n = int(mi.sum())
            assert torch.equal(infer["inputs_embeds"][i][mi], train["inputs_embeds"][i][mt][:n]), s.clip_id
            assert torch.allclose(lo_i[i][mi], lo_t[i][mt][:n], atol=1e-5), s.clip_id
        # teacher forcing the greedy tokens in the training layout predicts exactly those tokens
        codec = model.codec
        gen = greedy_generate(model.llm, infer["inputs_embeds"], infer["attention_mask"], 6, codec.eos_id, codec.pad_id)
        enc = [codec.encode(s, with_answer=False) for s in samples]
        forced = codec.collate([Encoded(e.ids + g, e.kinds + [TEXT] * len(g), e.n_prompt, False, False)
                                for e, g in zip(enc, gen)])
        video, feature = model.projector(model.streams(clips))
        emb = splice(model.llm.get_input_embeddings(), forced["input_ids"], forced["kinds"], video, feature)
        lo_f = model.llm(inputs_embeds=emb, attention_mask=forced["attention_mask"],
                         position_ids=forced["position_ids"]).logits
    for i, g in enumerate(gen):
        assert g, "nothing generated"
        mf = forced["attention_mask"][i].bool()
        n = enc[i].n_prompt
        assert lo_f[i][mf][n - 1:n - 1 + len(g)].argmax(-1).tolist() == g
    # a row's embeddings do not depend on the other rows of its batch
    alone = model.inputs(clips[:1], samples[:1], with_answer=False)
    m0 = infer["attention_mask"][0].bool()
    assert torch.allclose(alone["inputs_embeds"][0], infer["inputs_embeds"][0][m0], atol=1e-6)


# ----------------------------------------------------------------------------- tuning and the round trip

@pytest.fixture(scope="module")
def tuned(world):
    out = world["tmp"] / "tuned"
    res = stage2.tune(world["data"], world["df"], world["stage1"], world["lm"], TUNE)
    from accelerate.state import GradientState

    assert GradientState().sync_gradients  # the process-wide state is left with no accumulation under way
    stage2.save(res.model, out, {"tune": TUNE.model_dump(mode="json"), "base": {}}, world["stage1"])
    return res, out


def test_tuning_trains_only_adapters_and_projectors(world, tuned):
    res, out = tuned
    m = res.model
    trainable = {n for n, p in m.llm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base_before = stage2.load_base(str(world["lm"]))[0].state_dict()
    # peft keeps the wrapped projections' weights under `<name>.base_layer.weight`
    base_after = {k.replace(".base_layer.", "."): v for k, v in m.llm.get_base_model().state_dict().items()
                  if "lora_" not in k}
    assert set(base_after) == set(base_before)
    assert any("q_proj" in k for k in base_before)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert len(res.history) == TUNE.epochs and res.steps > 0 and res.tokens > 0
    assert {"adapter_config.json", "adapter_model.safetensors", "projector.safetensors", "config.json"} <= \
        {f.name for f in out.iterdir()}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == TUNE.lora_r and cfg["lora_alpha"] == TUNE.lora_alpha
    assert set(cfg["target_modules"]) == {"q_proj", "v_proj"}


RELOAD = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from models.test_stage2 import _features, _manifest
from esva.data.instructions import eval_samples
from esva.train import stage2
df = _manifest()
data = _features(df)
by_id = {{c.clip_id: c for c in data.clips}}
m = stage2.load({out!r}, {lm!r})
out = {{}}
for task in ("emotion", "reason"):
    s = eval_samples(df, task)
    out[task] = m.generate([by_id[x.clip_id] for x in s], s, 5, 12)
print(json.dumps(out))
"""


def test_adapter_reloads_in_a_fresh_process_with_the_same_generations(world, tuned):
    res, out = tuned
    df, data = world["df"], world["data"]
    by_id = {c.clip_id: c for c in data.clips}
    here = {}
    for task in ("emotion", "reason"):
        s = eval_samples(df, task)
        here[task] = res.model.generate([by_id[x.clip_id] for x in s], s, 5, 12)
    code = RELOAD.format(tests=str(ROOT / "tests"), out=str(out), lm=str(world["lm"]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert there == here
    assert any(a for a in here["reason"])  # something was generated


def test_a_base_model_of_another_hidden_size_is_an_error_naming_both(world, tuned):
    _, out = tuned
    other = _lm(world["tmp"], world["df"], hidden=48)
    with pytest.raises(LlmError, match=r"hidden size 48.*hidden size 32"):
        stage2.load(out, other)


def test_unknown_lora_target_names_the_modules(world):
    bad = TUNE.model_copy(update={"lora_targets": ("query",)})
    with pytest.raises(LlmError, match=r"\['query'\] name no module"):
        stage2.build(world["stage1"], world["lm"], world["data"], bad)


def test_gradient_checkpointing_gives_the_same_loss(world):
    data, df = world["data"], world["df"]
    by_id = {c.clip_id: c for c in data.clips}
    s = eval_samples(df.iloc[:3], "reason")
    losses = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = stage2.build(world["stage1"], world["lm"], data, TUNE.model_copy(update={"grad_checkpointing": ckpt,
                                                                                  "lora_dropout": 0.0}))
        m.llm.train()
        assert m.llm.get_base_model().is_activation_checkpointing == ckpt
        loss, _ = m.loss([by_id[x.clip_id] for x in s], s)
        loss.backward()
        grad = sum(float(p.grad.abs().sum()) for p in m.projector.parameters() if p.grad is not None)
        losses.append((float(loss.detach()), grad))
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-4)


def test_training_stage1_too_changes_it_uses_no_stale_cache_and_saves_it(world, tmp_path):
    from safetensors.torch import load_file

    from esva.train.stage1 import load_stage1

    cfg = TUNE.model_copy(update={"train_stage1": True, "epochs": 1})
    res = stage2.tune(world["data"], world["df"], world["stage1"], world["lm"], cfg)
    before = load_stage1(world["stage1"])[0].state_dict()
    after = res.model.stage1.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("msfe.") for k in changed) and any(k.startswith("aligner.") for k in changed)
    assert not res.model.cache  # streams are recomputed with the current stage-1 weights
    stage2.save(res.model, tmp_path / "s2", {"tune": cfg.model_dump(mode="json"), "base": {}}, world["stage1"])
    saved = load_file(str(tmp_path / "s2" / "stage1" / "model.safetensors"))
    assert all(torch.equal(saved[k], after[k]) for k in changed)


# ----------------------------------------------------------------------------- precision (tests/test_precision.py states the tolerances)

def _batch_loss(m, world):
    samples = training_samples(world["df"][world["df"].split == "train"], {"emotion": 1.0}, seed=0, epoch=1)[:6]
    by_id = {c.clip_id: c for c in world["data"].clips}
    with torch.no_grad():
        return float(m.loss([by_id[s.clip_id] for s in samples], samples, grad=False)[0])


def test_bf16_base_with_fp32_adapters_matches_fp32_on_the_same_weights(world):
    torch.manual_seed(0)
    m32 = stage2.build(world["stage1"], world["lm"], world["data"], TUNE)
    torch.manual_seed(0)
    m16 = stage2.build(world["stage1"], world["lm"], world["data"], TUNE.model_copy(update={"dtype": "bf16"}))
    assert m16.dtype == torch.bfloat16 and m32.dtype == torch.float32
    frozen = {p.dtype for n, p in m16.llm.named_parameters() if not p.requires_grad}
    trained = {p.dtype for n, p in m16.llm.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}  # the base in bf16, the LoRA in fp32
    assert {p.dtype for p in m16.projector.parameters()} == {torch.float32}
    l32, l16 = _batch_loss(m32, world), _batch_loss(m16, world)
    assert abs(l16 - l32) <= 0.05 * l32, (l16, l32)


@pytest.mark.parametrize("native", [True, False])
def test_tune_auto_precision_follows_the_hardware_check(world, monkeypatch, native):
    """`auto` tunes and generates in bf16 where the CPU has it natively, fp32 elsewhere (the check mocked)."""
    from esva import precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)
    cfg = TUNE.model_copy(update={"dtype": "auto", "epochs": 1})
    res = stage2.tune(world["data"], world["df"], world["stage1"], world["lm"], cfg)
    want = torch.bfloat16 if native else torch.float32
    assert res.model.dtype == want
    assert {p.dtype for p in res.model.llm.parameters() if not p.requires_grad} == {want}
    assert np.isfinite(res.history[0]["train_loss"]) and res.val_answers  # it trained and generated


# ----------------------------------------------------------------------------- layouts and init_from

def test_emotion_llama_layout_token_counts_order_and_positions(world):
    """At the paper's sizes (EVA ViT-g 1408-d at 448 px: 1024 patches; MAE, VideoMAE, HuBERT 1024-d; Llama-2
    4096): 256 tokens of 4 consecutive patches (5632 wide) at <VideoHere>, then MAE, VideoMAE, HuBERT, EVA CLS
    at <FeatureHere>, as Emotion-LLaMA's minigpt_v2.py / first_face.py build them."""
    from esva.models.projector import Projector

    torch.manual_seed(0)
    dims = {"eva": 1408, "eva_patches": 1024, "mae": 1024, "videomae": 1024, "hubert": 1024}
    proj = Projector("emotion_llama", dims, 4096)
    assert (proj.n_video, proj.n_feature) == (256, 4)
    assert tuple(proj.llama_proj.weight.shape) == (4096, 5632)
    s = {"eva_patches": torch.randn(1, 1024, 1408), "eva_cls": torch.randn(1, 1408), "mae": torch.randn(1, 1024),
         "videomae": torch.randn(1, 1024), "hubert": torch.randn(1, 1024)}
    with torch.no_grad():
        video, feature = proj(s)
        assert video.shape == (1, 256, 4096) and feature.shape == (1, 4, 4096)
        j = 37  # token j concatenates patches 4j..4j+3 (raster order), as view(bs, pn / 4, hs * 4)
        torch.testing.assert_close(video[0, j], proj.llama_proj(s["eva_patches"][0, 4 * j:4 * j + 4].reshape(-1)))
        for i, (name, lin) in enumerate([("mae", proj.feats_llama_proj1), ("videomae", proj.feats_llama_proj2),
                                         ("hubert", proj.feats_llama_proj3), ("eva_cls", proj.cls_tk_llama_proj)]):
            torch.testing.assert_close(feature[0, i], lin(s[name][0]))
    esva = Projector("esva", {**dims, "video": 1024}, 4096, audio_tokens=1, video_tokens=8)
    assert (esva.n_video, esva.n_feature) == (256 + 8, 4)
    # positions in the prompt: <s> [INST] <video> | 256 video | </video> <feature> | 4 feature | </feature> The person ...
    from esva.models.llm import load_base
    _, tok = load_base(str(world["lm"]))
    codec = PromptCodec(tok, proj.n_video, proj.n_feature, max_length=4096, max_new_tokens=500, answer_tokens=1024)
    enc = codec.encode(Instruction("c", "emotion", "we talked", instruction_text("emotion", 0), "sad"), False)
    kinds = enc.kinds
    v0, f0 = kinds.index(VIDEO), kinds.index(FEATURE)
    assert kinds[v0:v0 + 256] == [VIDEO] * 256 and kinds.count(VIDEO) == 256
    assert kinds[f0:f0 + 4] == [FEATURE] * 4 and kinds.count(FEATURE) == 4
    assert enc.ids[0] == tok.bos_token_id
    assert tok.decode(enc.ids[1:v0]) == "[INST] <video>"
    assert tok.decode(enc.ids[v0 + 256:f0]) == "</video> <feature>"
    assert tok.decode(enc.ids[f0 + 4:]) == ("</feature> The person in video says: we talked.  [emotion] Please "
                                            "determine which emotion label in the video represents: happy, sad, "
                                            "neutral, angry, worried, surprise, fear, contempt, doubt.  [/INST]")


def _el_checkpoint(m, with_features=True, seed=5):
    """A checkpoint in Emotion-LLaMA's key layout ({'model': ...}), built from this model's own shapes."""
    from peft import get_peft_model_state_dict

    g = torch.Generator().manual_seed(seed)
    state = {f"llama_model.{k}": torch.randn(v.shape, generator=g) for k, v in get_peft_model_state_dict(m.llm).items()}
    names = ["llama_proj"] + (["feats_llama_proj1", "feats_llama_proj2", "feats_llama_proj3", "cls_tk_llama_proj"]
                              if with_features else [])
    for k, v in m.projector.state_dict().items():
        if k.split(".")[0] in names:
            state[k] = torch.randn(v.shape, generator=g)
    state["attention.fc.weight"] = torch.randn(3, 3, generator=g)  # Emotion-LLaMA's unused fusion block
    return state


@pytest.mark.parametrize("which", ["emotion_llama", "minigpt_v2"])
def test_init_from_loads_every_mapped_key(world, tmp_path, which):
    from peft import get_peft_model_state_dict

    cfg = TUNE.model_copy(update={"layout": "emotion_llama"})
    torch.manual_seed(0)
    fresh = stage2.build(world["stage1"], world["lm"], world["data"], cfg)
    state = _el_checkpoint(fresh, with_features=which == "emotion_llama")
    path = tmp_path / f"{which}.pth"
    torch.save({"model": state, "epoch": 3}, path)
    torch.manual_seed(0)  # the same fresh initialisation, then the checkpoint over it
    m = stage2.build(world["stage1"], world["lm"], world["data"], cfg.model_copy(update={"init_from": str(path)}))
    lora, proj = get_peft_model_state_dict(m.llm), m.projector.state_dict()
    mapped = 0
    for k, v in state.items():
        if k.startswith("llama_model."):
            assert torch.equal(lora[k[len("llama_model."):]], v), k
            mapped += 1
        elif not k.startswith("attention."):
            assert torch.equal(proj[k], v), k
            mapped += 1
    rep = m.init_report
    assert rep["loaded"] == mapped and rep["ignored"] == 1 and rep["lora_tensors"] == len(lora)
    if which == "minigpt_v2":  # no feature projections in MiniGPT-v2: they stay fresh, and are listed
        assert rep["projections"] == ["llama_proj"]
        assert "projector:feats_llama_proj1.weight" in rep["fresh"]
        assert torch.equal(proj["feats_llama_proj1.weight"], fresh.projector.state_dict()["feats_llama_proj1.weight"])
    else:
        assert rep["fresh"] == [] and len(rep["projections"]) == 5


def test_init_from_refuses_what_does_not_fit(world, tmp_path):
    cfg = TUNE.model_copy(update={"layout": "emotion_llama"})
    m = stage2.build(world["stage1"], world["lm"], world["data"], cfg)
    state = _el_checkpoint(m)
    key = "llama_proj.weight"
    torch.save({"model": {**state, key: torch.zeros(3, 3)}}, tmp_path / "shape.pth")
    with pytest.raises(LlmError, match="other shapes .*llama_proj.weight \\(checkpoint \\(3, 3\\)"):
        stage2.build(world["stage1"], world["lm"], world["data"], cfg.model_copy(update={"init_from": str(tmp_path / "shape.pth")}))
    k_proj = next(k for k in state if "q_proj.lora_A" in k).replace("q_proj", "k_proj")
    torch.save({"model": {**state, k_proj: torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(LlmError, match="map onto nothing here .*k_proj.lora_A"):
        stage2.build(world["stage1"], world["lm"], world["data"], cfg.model_copy(update={"init_from": str(tmp_path / "other.pth")}))
    import pickle

    from tests.encoders.test_checkpoints import _Exploit

    with (tmp_path / "evil.pth").open("wb") as fh:
        pickle.dump({"model": {"llama_proj.weight": _Exploit(tmp_path / "pwned")}}, fh)
    with pytest.raises(LlmError, match="evil.pth is not a checkpoint that torch's weights_only loader accepts"):
        stage2.build(world["stage1"], world["lm"], world["data"], cfg.model_copy(update={"init_from": str(tmp_path / "evil.pth")}))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_emotion_llama_layout_tunes_saves_and_reloads(world, tmp_path, dtype):
    cfg = TUNE.model_copy(update={"layout": "emotion_llama", "epochs": 1, "dtype": dtype})
    res = stage2.tune(world["data"], world["df"], world["stage1"], world["lm"], cfg)
    out = tmp_path / "el"
    stage2.save(res.model, out, {"tune": cfg.model_dump(mode="json"), "base": {}}, world["stage1"])
    back = stage2.load(out, world["lm"])
    assert back.projector.config() == res.model.projector.config() and back.projector.layout == "emotion_llama"
    assert (back.projector.n_video, back.projector.n_feature) == (PATCHES // 4, 4)
    assert back.dtype == res.model.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    # Emotion-LLaMA's layout reads only utterance means and EVA tokens: MSFE and the aligner are not run
    streams = back.streams(world["data"].clips[:2])
    assert "audio" not in streams and "video" not in streams and streams["hubert"].shape == (2, DIM["hubert"])
    clips = [c for c in world["data"].clips[:3]]
    samples = eval_samples(world["df"].iloc[:3], "emotion")
    assert back.generate(clips, samples, 3, 6) == res.model.generate(clips, samples, 3, 6)
