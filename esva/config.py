"""Typed, strict configs: one pydantic model per params.yaml section.

Every model forbids unknown keys and checks types strictly, so a typo in params.yaml or in a
`--set key=value` override is an error that names the key instead of a silently ignored knob.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A params file or override that does not fit the schema. The message names the key."""


Dtype = Literal["fp32", "bf16", "auto"]  # esva.precision: auto is bf16 where native, so it differs by machine


def _as_tuple(v: Any) -> Any:
    """YAML gives lists; strict mode wants the declared tuples."""
    return tuple(v) if isinstance(v, list) else v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SplitFractions(Strict):
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.val, self.test) < 0:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {total:.4f}")
        return self


class SynthConfig(Strict):
    """The embedded synthetic corpus (`esva synth`)."""

    seed: int = 2024
    n_clips: int = Field(240, ge=6)
    split: SplitFractions = SplitFractions()
    difficulty: float = Field(0.5, ge=0.0, le=1.0)
    width: int = Field(320, ge=96)
    height: int = Field(240, ge=96)
    fps: int = Field(25, ge=5, le=60)
    sample_rate: int = Field(16000, ge=8000)
    min_seconds: float = Field(2.0, gt=0)
    max_seconds: float = Field(5.0, gt=0)
    max_offset_ms: float = Field(200.0, ge=0)
    lexical_cue_prob: float = Field(0.4, ge=0.0, le=1.0)
    crf: int = Field(20, ge=0, le=51)
    workers: int = Field(2, ge=1)
    # extra evaluation splits of harder conditions, clips per condition (esva.data.synthetic.condition_spec):
    # drift, jump (time-varying offsets), noise (audio bursts), occlusion (lower face covered or blurred),
    # missing (a span with no audio or no video); each keeps its offset track and corrupted spans
    conditions: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _conditions(self) -> "SynthConfig":
        from esva.data.synthetic import CONDITIONS

        for k, v in self.conditions.items():
            if k not in CONDITIONS:
                raise ValueError(f"synth.conditions: unknown condition {k!r}; choose from {list(CONDITIONS)}")
            if v < 0:
                raise ValueError(f"synth.conditions.{k} must be >= 0, got {v}")
        return self

    @model_validator(mode="after")
    def _durations(self) -> "SynthConfig":
        if self.max_seconds < self.min_seconds:
            raise ValueError(
                f"synth.max_seconds ({self.max_seconds}) must be >= synth.min_seconds ({self.min_seconds})"
            )
        return self


ADAPTERS = ("synthetic", "folder", "mer2023", "mer2024", "merr", "emer")


class Source(Strict):
    name: str  # lower-case letters, digits, _: the prefix of every clip id from this source
    adapter: Literal["synthetic", "folder", "mer2023", "mer2024", "merr", "emer"]
    root: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", v):
            raise ValueError(f"a source name is lower-case letters, digits and _, starting with a letter; got {v!r}")
        return v


class DataConfig(Strict):
    """Which datasets exist and where they live (`data.sources`)."""

    sources: tuple[Source, ...] = (Source(name="synthetic", adapter="synthetic", root="data/raw/synthetic"),)
    train: tuple[str, ...] = ("synthetic:train",)  # source:split pairs that train both stages (paper: [merr:train])
    val: tuple[str, ...] = ("synthetic:val",)  # source:split pairs that validate them; empty: carved from train
    robust: tuple[str, ...] = ()  # source:split pairs of harder conditions (esva adaptive): evaluated, never trained on
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # the carved share, stratified by label
    seed: int = 0  # the carving's seed
    transcript_language: Literal["english", "chinese"] = "english"  # which transcript files/columns to read

    _sources_tuple = field_validator("sources", mode="before")(_as_tuple)
    _pairs_tuple = field_validator("train", "val", "robust", mode="before")(_as_tuple)

    @model_validator(mode="after")
    def _unique(self) -> "DataConfig":
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"data.sources names must be unique, duplicated: {dup}")
        if not names:
            raise ValueError("data.sources is empty")
        return self


class IngestConfig(Strict):
    max_skip_ratio: float = Field(0.1, ge=0.0, le=1.0)


class DecodeConfig(Strict):
    fps: float = Field(25.0, gt=0)
    sample_rate: int = Field(16000, ge=8000)
    max_side: int = Field(320, ge=32)
    min_seconds: float = Field(0.5, ge=0)
    max_seconds: float = Field(120.0, gt=0)
    require_audio: bool = True
    require_video: bool = True
    workers: int = Field(2, ge=1)
    max_skip_ratio: float = Field(0.1, ge=0.0, le=1.0)
    timeout_s: float = Field(600.0, gt=0)
    input_hash: Literal["full", "quick"] = "full"  # per-clip provenance: content hash, or size+mtime+head+tail


class CropConfig(Strict):
    backend: Literal["auto", "haar", "face_alignment"] = "haar"
    size: int = Field(224, ge=32)
    margin: float = Field(0.25, ge=0.0, le=2.0)
    smooth: float = Field(0.6, ge=0.0, lt=1.0)
    detect_every: int = Field(5, ge=1)  # detect on every k-th frame (and the last), interpolate between (1: every frame)
    min_face_ratio: float = Field(0.0, ge=0.0, le=1.0)
    skip_if_no_face: bool = True
    device: str = "cpu"
    workers: int = Field(2, ge=1)
    max_skip_ratio: float = Field(0.1, ge=0.0, le=1.0)


class EncoderConfig(Strict):
    """What every frozen encoder shares (`features.<encoder>`)."""

    checkpoint: str = "tiny"  # tiny (random weights, real architecture) | a local directory | a hub id
    revision: str | None = None  # hub revision (commit or tag) when checkpoint is a hub id
    layers: str | tuple[int, ...] = "last"  # last | last4sum | [hidden-state indices]
    dtype: Dtype = "fp32"  # fp32 | bf16 | auto (bf16 where the hardware runs it natively: differs by machine)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    batch_budget: int = Field(64, ge=1)  # padded input units per batch (see each encoder)
    short_policy: Literal["pad", "skip"] = "pad"  # input shorter than the encoder's minimum
    trust_remote_code: bool = False
    seed: int = 0  # random init of the tiny preset
    max_skip_ratio: float = Field(0.1, ge=0.0, le=1.0)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        v = _as_tuple(v)
        if isinstance(v, str) and v not in ("last", "last4sum"):
            raise ValueError(f"layers must be 'last', 'last4sum' or a list of ints, got {v!r}")
        return v


class HubertFeatures(EncoderConfig):
    batch_budget: int = Field(960000, ge=16000)  # audio samples per padded batch (60 s at 16 kHz)


class MaeFeatures(EncoderConfig):
    batch_budget: int = Field(64, ge=1)  # face frames per batch
    frame_stride: int = Field(1, ge=1)  # use every n-th face frame
    pool: Literal["mean", "cls"] = "mean"  # frame vector: mean of patch tokens or the CLS token


class VideoMaeFeatures(EncoderConfig):
    batch_budget: int = Field(8, ge=1)  # 16-frame windows per batch
    window_stride: int = Field(16, ge=1)  # frames between window starts


class EvaFeatures(EncoderConfig):
    batch_budget: int = Field(16, ge=1)  # images per batch
    frame: Literal["first", "middle", "peak"] = "peak"  # peak: the frame farthest from the clip's median face
    image_size: int | None = None  # None: the checkpoint's own resolution (Emotion-LLaMA: 448)
    # also store Emotion-LLaMA's visual tokens for stage 2 (tune.layout): `patches` (every patch token) and `cls`,
    # the last layer's output through MiniGPT-v2's ln_vision (a LayerNorm without affine)
    tokens: bool = True


class TextFeatures(EncoderConfig):
    checkpoint: str = "minilm"  # minilm: the bundled real all-MiniLM-L6-v2 (sha256-checked) | tiny | dir | hub id
    batch_budget: int = Field(4096, ge=16)  # padded tokens per batch
    max_tokens: int = Field(128, ge=8)


ENCODERS = ("hubert", "mae", "videomae", "eva", "text")


class FeaturesConfig(Strict):
    """Frozen-encoder features (`esva extract ENCODER`): one sub-section per encoder, plus `use`:
    which encoders stage 1 trains on (the encoder ablation of Table 5 changes only `use`)."""

    use: tuple[str, ...] = ENCODERS

    @field_validator("use", mode="before")
    @classmethod
    def _use(cls, v: Any) -> Any:
        v = _as_tuple(v)
        if isinstance(v, tuple):
            bad = [x for x in v if x not in ENCODERS]
            if bad:
                raise ValueError(f"unknown encoders {bad}; choose from {list(ENCODERS)}")
            if not v:
                raise ValueError("features.use is empty")
        return v

    hubert: HubertFeatures = HubertFeatures()
    mae: MaeFeatures = MaeFeatures()
    videomae: VideoMaeFeatures = VideoMaeFeatures()
    eva: EvaFeatures = EvaFeatures()
    text: TextFeatures = TextFeatures()


class MsfeConfig(Strict):
    """Multi-scale feature extraction on HuBERT frames (eq. 1)."""

    enabled: bool = True
    scales: int = Field(3, ge=1, le=8)  # kernels 3, 7, 15, ... frames at 50 Hz
    kernels: tuple[int, ...] | None = None  # explicit odd kernel sizes; override scales
    dilation: int = Field(1, ge=1)
    hidden: int = Field(64, ge=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    _kernels_tuple = field_validator("kernels", mode="before")(_as_tuple)


class ContrastConfig(Strict):
    """Supervised contrastive loss on pooled MSFE embeddings (eq. 2)."""

    tau: float = Field(0.1, gt=0)
    gamma: float = Field(0.1, ge=0)  # its weight in the total loss


class AlignConfig(Strict):
    """Local-global audio-video alignment (eq. 4-6, 8, 9)."""

    enabled: bool = True
    video: Literal["mae", "videomae"] = "mae"  # the frame-level video features aligned with the audio
    rate: float = Field(25.0, gt=0)  # the common frame rate
    dim: int = Field(64, ge=4)  # the shared space
    max_shift: int = Field(8, ge=1)  # K, in frames at align.rate
    window: int = Field(8, ge=1)  # the local window of eq. 4, in frames
    hop: int | None = Field(None, ge=1)  # frames between window starts; null: window // 2
    local: Literal["distance", "correlation"] = "distance"  # eq. 4's D_i (esva/models/align.py window_scores)
    controller: Literal["fixed", "fuzzy", "neural", "backstepping"] = "fixed"  # how windows' offsets form tau*(t)
    neural_steps: int = Field(150, ge=1)  # the neural controller's training (after stage 1; esva/train/controllers.py)
    neural_lr: float = Field(0.02, gt=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    temperature: float = Field(0.02, gt=0)  # soft-argmin
    contrast_tau: float = Field(0.1, gt=0)  # cross-clip contrastive term
    contrast_weight: float = Field(1.0, ge=0)
    warmup_epochs: int = Field(20, ge=0)  # epochs training the aligner alone before the joint loss


class TrainConfig(Strict):
    """Stage 1 training on cached features (eq. 7)."""

    seed: int = 0
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    patience: int = Field(10, ge=1)  # epochs without a better validation weighted F1
    lam: float = Field(1.0, ge=0)  # lambda of eq. 7
    hidden: int = Field(128, ge=4)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    aux_weight: float = Field(0.3, ge=0)  # audio-only and video-only heads (per-modality evidence)
    reliability: bool = False  # weigh frame-level streams by their frames' typicality (esva/models/fusion.py)
    grad_clip: float = Field(1.0, gt=0)
    dtype: Dtype = "fp32"  # autocast of the forward pass; weights and optimizer stay fp32
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    feature_cache_mb: int = Field(512, ge=0)  # features streamed from the stores through a cache of this size
    max_skip_ratio: float = Field(0.1, ge=0.0, le=1.0)
    checkpoint_every: int = Field(50, ge=0)  # steps between resumable checkpoints (and every epoch end); 0 = off


class AblateConfig(Strict):
    """The ablation rows' statistics (`esva train --variant`; only the ablate stage reads them), over `seeds`
    training seeds (train.seed, +1, ...; `encoder_seeds` for Table 5's encoder rows): with folds 0, each
    seed trains on the manifest's split and predicts its test clips (esva.train.cv.repeat_seeds; 1 seed: one
    run, no interval over seeds); with folds >= 2, repeated stratified k-fold cross-validation on the training
    clips, seeds x folds trainings."""

    seeds: int = Field(5, ge=1)
    encoder_seeds: int = Field(1, ge=1)  # the same for Table 5's encoder rows (variants enc_*)
    folds: int = Field(0, ge=0)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)

    @model_validator(mode="after")
    def _folds(self) -> "AblateConfig":
        if self.folds == 1:
            raise ValueError("ablate.folds: 0 (off) or at least 2")
        return self


class LlmConfig(Strict):
    """The base LLM of stage 2 (`esva lm`). `tiny`: a small LLaMA with random weights and a tokenizer
    trained on the corpus text, pretrained here as a plain language model on the training split's text
    (it stands in for the pretrained Llama-2); a local directory or hub id: used as it is."""

    checkpoint: str = "tiny"  # paper: meta-llama/Llama-2-7b-chat-hf
    revision: str | None = None
    trust_remote_code: bool = False
    vocab_size: int = Field(1024, ge=300)  # the tiny preset from here on
    hidden_size: int = Field(256, ge=16)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(688, ge=16)
    max_length: int = Field(512, ge=64)  # context (max_position_embeddings)
    seed: int = 0
    epochs: int = Field(12, ge=1)  # plain-LM pretraining on the training split's text
    batch_size: int = Field(16, ge=1)
    block: int = Field(128, ge=16)  # tokens per pretraining sequence
    lr: float = Field(1e-3, gt=0)
    dtype: Dtype = "fp32"  # the tiny preset's pretraining (autocast)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    quantize: Literal["none", "8bit", "4bit"] = "none"  # stage 2 loads the frozen base with bitsandbytes

    @model_validator(mode="after")
    def _heads(self) -> "LlmConfig":
        if self.hidden_size % self.heads:
            raise ValueError(f"llm.hidden_size ({self.hidden_size}) must be divisible by llm.heads ({self.heads})")
        if self.block > self.max_length:
            raise ValueError(f"llm.block ({self.block}) must be <= llm.max_length ({self.max_length})")
        return self


TEXT_LIMITS = {"max_new_tokens": 500, "answer_tokens": 1024}  # Emotion-LLaMA's eval max_new_tokens, train max_txt_len


class TuneConfig(Strict):
    """Stage 2: LoRA instruction tuning with projected audio and video tokens (`esva tune`)."""

    seed: int = 0
    tasks: dict[str, float] = {"emotion": 1.0, "reason": 0.5, "ov": 0.5}  # samples per clip and epoch
    layout: Literal["esva", "emotion_llama"] = "esva"  # stage-2 token layout (esva/models/projector.py)
    init_from: str | None = None  # Emotion-LLaMA's or MiniGPT-v2's released .pth: LoRA and projections start from it
    audio_tokens: int = Field(8, ge=1)  # esva layout: MSFE output pooled to this many tokens (Emotion-LLaMA: 1)
    video_tokens: int = Field(8, ge=1)  # esva layout: the aligned video sequence pooled to this many tokens
    lora_r: int = Field(64, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    train_stage1: bool = False  # false: MSFE and the aligner stay frozen (their streams are computed once)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine: linear warm-up, then cosine decay to 0
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    grad_checkpointing: bool = False
    dtype: Dtype = "fp32"  # bf16/auto: the frozen base is loaded in bf16 (fp16 on a GPU without bf16) and run
    # under autocast; the LoRA, the projectors and the optimizer stay fp32
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    max_length: int | None = None  # the context; null: the base LLM's
    # text limits; null: the preset's (Emotion-LLaMA: answers cut at 1024 tokens in training, 500 new tokens at evaluation)
    max_new_tokens: int | None = Field(None, ge=4)  # longest generated answer (reasons)
    answer_tokens: int | None = Field(None, ge=4)  # training answers are cut to this many tokens, counted
    eval_batch_size: int = Field(16, ge=1)
    feature_cache_mb: int = Field(512, ge=0)  # features streamed from the stores through a cache of this size
    max_skip_ratio: float = Field(0.1, ge=0.0, le=1.0)
    checkpoint_every: int = Field(50, ge=0)  # optimizer steps between resumable checkpoints (and every epoch end); 0 = off

    _lora_targets_tuple = field_validator("lora_targets", mode="before")(_as_tuple)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in ("emotion", "reason", "reason_v2", "ov")]
        if bad:
            raise ValueError(f"unknown tasks {bad}; choose from ['emotion', 'reason', 'reason_v2', 'ov']")
        if min(v.values(), default=0.0) < 0 or max(v.values(), default=0.0) <= 0:
            raise ValueError(f"tune.tasks weights must be >= 0 with one > 0, got {v}")
        return v


class EvalSplit(Strict):
    source: str = "synthetic"  # a data.sources name (the manifest's `dataset`)
    split: str = "test"


class JudgeConfig(Strict):
    """An optional OpenAI-compatible judge for EMER (never used unless base_url and model are set)."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)


class OvGroupingLlmConfig(Strict):
    """An optional OpenAI-compatible LLM that writes the official MER2024-OV per-sample synonym groupings
    (`<out>/<name>.npy`, resumable) which OV is then scored with. Off unless base_url is set; then model and
    out are required."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    out: str | None = None  # the folder of <name>.npy groupings

    @model_validator(mode="after")
    def _complete(self) -> "OvGroupingLlmConfig":
        if self.base_url and not (self.model and self.out):
            raise ValueError("with base_url set, model and out (the grouping folder) are required")
        if not self.base_url and (self.model or self.out):
            raise ValueError("model / out set without base_url: set base_url to call the LLM, "
                             "or point evaluate.grouping at an existing folder")
        return self


class EvaluateConfig(Strict):
    """`esva evaluate`: which split each benchmark's metric is computed on (paper: MER2023 test3,
    MER2024 OV, EMER), the OV synonym grouping, and the optional LLM scorers (EMER judge, OV grouping)."""

    mer: EvalSplit = EvalSplit()  # discrete labels -> metrics/mer2023.json
    ov: EvalSplit = EvalSplit()  # open vocabulary -> metrics/mer2024_ov.json
    emer: EvalSplit = EvalSplit()  # explanations -> metrics/emer.json
    grouping: str | None = None  # a synonym grouping file, or a folder of the official per-sample <name>.npy groupings; null: the offline table
    batch_size: int = Field(16, ge=1)
    judge: JudgeConfig = JudgeConfig()
    ov_grouping_llm: OvGroupingLlmConfig = OvGroupingLlmConfig()

    @model_validator(mode="after")
    def _one_ov_grouping(self) -> "EvaluateConfig":
        if self.grouping and self.ov_grouping_llm.base_url:
            raise ValueError("set evaluate.grouping or evaluate.ov_grouping_llm, not both "
                             "(the LLM's folder, ov_grouping_llm.out, is the grouping then)")
        return self


class AdaptiveConfig(Strict):
    """The alignment controllers under harder conditions (`esva adaptive`, esva/eval/adaptive.py)."""

    seeds: int = Field(3, ge=1)  # stage-1 training seeds (the first is the train stage's model; the others train here)


class MechanismConfig(Strict):
    """Mechanism checks (`esva mechanism`, esva/eval/mechanism.py): feature-level synthetic conditions in which
    MSFE's and the aligner's effects exist by construction, each with its own train/val/test clips. They test
    the implementation, not the paper's claims. Training reads msfe, contrast, align and train as they are, but
    for the epochs, patience and aligner warm-up set here."""

    seed: int = 0  # the synthetic features' seed (the training seeds are train.seed, +1, ...)
    seeds: int = Field(5, ge=1)  # training seeds per variant
    train_per_class: int = Field(64, ge=2)  # clips of each of the two classes, per split
    val_per_class: int = Field(24, ge=1)
    test_per_class: int = Field(32, ge=1)
    dim: int = Field(32, ge=4)  # feature dimension of both streams
    amplitude: float = Field(6.0, gt=0)  # an event's size, in noise standard deviations
    msfe_seconds: float = Field(2.0, gt=0)  # MSFE condition: clip length (50 Hz frames)
    msfe_events: int = Field(8, ge=1)  # two-frame patterns per clip
    align_seconds: float = Field(4.0, gt=0)  # alignment condition: clip length (25 Hz video, 50 Hz audio)
    align_events: int = Field(6, ge=2)  # audio-video event pairs per clip (even: half of each kind)
    carrier: float = Field(2.0, ge=0)  # the shared timing carrier the aligner locks on, in noise standard deviations
    epochs: int = Field(30, ge=1)  # in place of train.epochs
    patience: int = Field(15, ge=1)  # in place of train.patience (MSFE's output layer starts at zero: a plateau of ~10 epochs)
    warmup_epochs: int = Field(6, ge=0)  # in place of align.warmup_epochs

    @model_validator(mode="after")
    def _even(self) -> "MechanismConfig":
        if self.align_events % 2:
            raise ValueError(f"mechanism.align_events must be even (half of each event kind), got {self.align_events}")
        return self


class ComputeConfig(Strict):
    """How `esva extract` spreads its clips over processes (README "Many GPUs, many machines").

    - `single`: one process (the default).
    - `multi-gpu`: `esva extract` starts itself under torchrun with `processes` processes on this machine
      (one per GPU; gloo on a CPU), each extracting one shard of the clips on its own device (cuda:LOCAL_RANK),
      then rank 0 merges the shards into the store.
    - `multi-node`: the shards come from a launcher over machines (a SLURM array running
      `esva extract ENC --shard I/N` with N = `shards`); `esva extract ENC` (what `dvc repro` runs) merges them,
      and names every shard that is missing or stale.
    Where the clips are computed never changes what is stored: the store's recipe is the same."""

    launcher: Literal["single", "multi-gpu", "multi-node"] = "single"
    processes: int = Field(1, ge=1)
    shards: int = Field(1, ge=1)


class Params(Strict):
    """The whole params.yaml. Sections for later stages are added by their issues."""

    synth: SynthConfig = SynthConfig()
    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    decode: DecodeConfig = DecodeConfig()
    crop: CropConfig = CropConfig()
    features: FeaturesConfig = FeaturesConfig()
    compute: ComputeConfig = ComputeConfig()
    msfe: MsfeConfig = MsfeConfig()
    contrast: ContrastConfig = ContrastConfig()
    align: AlignConfig = AlignConfig()
    train: TrainConfig = TrainConfig()
    ablate: AblateConfig = AblateConfig()
    llm: LlmConfig = LlmConfig()
    tune: TuneConfig = TuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mechanism: MechanismConfig = MechanismConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()


def _parse_value(raw: str) -> Any:
    """An override's value is YAML, so `--set synth.n_clips=12` gives an int and `x=[a,b]` a list."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(tree: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `key.sub=value` overrides to a nested dict; an unknown path is an error naming it."""
    tree = copy.deepcopy(tree)
    defaults = Params().model_dump(mode="python")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node, ref = tree, defaults
        for i, part in enumerate(parts):
            known = isinstance(ref, dict) and part in ref
            if not known:
                raise ConfigError(f"unknown params key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            if i == len(parts) - 1:
                node[part] = _parse_value(raw)
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
                ref = ref[part]
    return tree


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read params.yaml (or defaults when path is None), apply overrides, validate strictly."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"params file not found: {p}")
        try:
            with p.open("r", encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
        source = str(p)
    tree = apply_overrides(tree, overrides)
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able config pieces, for store provenance and rebuild checks."""
    blob = json.dumps(
        [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _View:
    """A params node restricted to declared keys: reading any other is a ConfigError naming the key and
    the stage, so a stage can never depend on a key its dvc.yaml entry does not list."""

    def __init__(self, node: BaseModel, allowed: dict, path: str, stage: str) -> None:
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_allowed", allowed)  # {key: True (whole) | {sub-key: ...}}
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        sub = self._allowed.get(name)
        key = f"{self._path}.{name}" if self._path else name
        if sub is None:
            raise ConfigError(f"stage {self._stage!r} reads params key {key!r}, which it does not declare "
                              f"(its PARAMS, and so its dvc.yaml params, must list it)")
        value = getattr(self._node, name)
        return value if sub is True else _View(value, sub, key, self._stage)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(f"params are read-only (tried to set {name!r})")

    def model_dump(self, **kwargs: Any) -> dict:
        """Only the declared keys (what this stage may record about its params)."""
        full = self._node.model_dump(**kwargs)
        return {k: (full[k] if sub is True else _View(getattr(self._node, k), sub, "", self._stage).model_dump(**kwargs))
                for k, sub in self._allowed.items()}


def restrict(params: Params, keys: tuple[str, ...] | list[str], stage: str) -> Any:
    """`params` as a stage may read it: only `keys` (sections like `train`, or dotted keys like
    `llm.quantize`). A whole section comes back as its config model; a partial one as a restricted view."""
    tree: dict = {}
    for key in keys:
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is True:
                break
            node = nxt
        else:
            node[parts[-1]] = True
    return _View(params, tree, "", stage)


def except_keys(section: str, model: type[BaseModel], excluded: tuple[str, ...]) -> tuple[str, ...]:
    """Every key of a section but `excluded` (e.g. llm but llm.quantize)."""
    return tuple(f"{section}.{k}" for k in model.model_fields if k not in excluded)
