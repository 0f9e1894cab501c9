"""Training configs: ``transformers.TrainingArguments`` subclasses (TRL's habit), parsed by the CLI with
``HfArgumentParser``.

``TrainConfig`` holds what every objective shares — all of ``TrainingArguments`` (optimiser, schedule,
precision, logging, checkpoints, DeepSpeed) with ALT's defaults, plus data, LoRA and launcher options.
Each objective's config subclasses it with its own loss options (``AltTrainConfig`` here; the others
next to their trainers). ``epochs``, ``batch_size``, ``grad_accum`` and ``warmup_ratio`` are kept as
short aliases of ``num_train_epochs``, ``per_device_train_batch_size``, ``gradient_accumulation_steps``
and ``warmup_steps`` (a float below 1 is a ratio); once set they are folded into those and read ``None``.

A config is only a description: building one sets up no device or process group (see
``_setup_devices``); ``for_trainer`` makes the copy a ``Trainer`` runs with.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from transformers import TrainingArguments

ZERO2_CONFIG = Path(__file__).with_name("zero2.json")  # DeepSpeed ZeRO-2, "auto" values filled by transformers
DEFAULT_BETA_PRETRAINED = 0.05  # docs/design.md §1: KL weight when starting from a plain pretrained model
_FOR_TRAINER = contextvars.ContextVar("alt_config_for_trainer", default=False)
_ALIASES = {"epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
            "grad_accum": "gradient_accumulation_steps", "warmup_ratio": "warmup_steps"}


@dataclass
class TrainConfig(TrainingArguments):
    """Options every objective shares (defaults follow the ALT paper, docs/design.md §1).

    Optimisation (``TrainingArguments``' own fields, ALT's defaults): learning_rate 5e-5, num_train_epochs 2
    (alias ``epochs``), warmup_steps 0.05 (a ratio; alias ``warmup_ratio``), lr_scheduler_type linear,
    weight_decay 0, max_grad_norm 1, per_device_train_batch_size 8 (alias ``batch_size``),
    gradient_accumulation_steps 1 (alias ``grad_accum``), max_steps -1 (overrides epochs when > 0), seed 0,
    bf16, gradient_checkpointing.
    Data:
        max_prompt_tokens: the prompt is cut from the left to this many tokens (the feedback segment is kept whole).
        max_response_tokens: the response is cut to this many tokens (no EOS then: it counts as truncated).
    LoRA (PEFT):
        lora, lora_r, lora_alpha, lora_dropout, lora_target_modules; merge_lora saves a merged full model
        instead of the adapter.
    Distributed (see ``training.launch``):
        deepspeed: path to a DeepSpeed config JSON (``zero2`` = the shipped ZeRO-2 config), or None.
        num_procs: ranks started on each machine (CPU ranks or GPUs).
        launcher: ``deepspeed`` (its runner; ``hostfile`` for several machines) or ``accelerate``
            (``accelerate launch`` with ``accelerate_config`` — the user's own, DeepSpeed or FSDP — or one
            generated from deepspeed / num_machines / machine_rank / main_process_ip / main_process_port).
        num_machines, machine_rank, main_process_ip, main_process_port: the multi-machine rendezvous
            (every machine runs the same command with its own ``machine_rank``; port 0 = a free port on one
            machine, 29500 on several).
        hostfile: DeepSpeed hostfile (``host slots=N`` lines); its runner starts the ranks on every host.
    Checkpoints and logging:
        resume: continue from the newest checkpoint in the output directory if there is one.
        logging_steps 1, save_steps (0 = a checkpoint per epoch), report_to (TensorBoard by default).
    """

    objective: ClassVar[str] = "sft"

    # TrainingArguments fields with our defaults
    learning_rate: float = field(default=5e-5, metadata={
        "help": "peak learning rate; 5e-5 full fine-tuning steers a 135M chat model within a few rounds "
                "(docs/design.md §1 placement experiment); the paper used 1e-5 to 2e-5 on larger models"})
    num_train_epochs: float = field(default=4.0, metadata={
        "help": "passes over the data pool per round; 4 moved the default model's exemplar share 15 points in 3 "
                "rounds where 2 did not (README, Efficacy)"})
    warmup_steps: float = field(default=0.05, metadata={"help": "warm-up steps, or a share of all steps if < 1"})
    seed: int = field(default=0, metadata={"help": "random seed (data order, initialisation of LoRA)"})
    logging_steps: float = field(default=1, metadata={"help": "log every N optimizer steps"})
    save_steps: float = field(default=0, metadata={"help": "checkpoint every N steps (0 = every epoch)"})
    save_total_limit: int | None = field(default=1, metadata={"help": "checkpoints kept"})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "tensorboard | none"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "our collators need every column"})
    disable_tqdm: bool | None = field(default=True, metadata={"help": "progress goes to the job row, not a bar"})
    deepspeed: dict | str | None = field(default=None, metadata={
        "help": "DeepSpeed config JSON path, or 'zero2' for the shipped ZeRO-2 config"})
    # short aliases (folded into the fields above)
    epochs: float | None = field(default=None, metadata={"help": "alias of --num_train_epochs"})
    batch_size: int | None = field(default=None, metadata={"help": "alias of --per_device_train_batch_size"})
    grad_accum: int | None = field(default=None, metadata={"help": "alias of --gradient_accumulation_steps"})
    warmup_ratio: float | None = field(default=None, metadata={"help": "share of steps with linear warm-up "
                                                                       "(alias of --warmup_steps < 1)"})
    bf16_auto: bool = field(default=True, metadata={
        "help": "unless --bf16 is given: bfloat16 mixed precision where it is measured faster (a GPU with bf16, a "
                "CPU with AMX; one process), else float32"})
    # data
    max_prompt_tokens: int = field(default=512, metadata={"help": "prompt tokens kept (cut from the left)"})
    max_response_tokens: int = field(default=256, metadata={"help": "response tokens kept (cut from the right)"})
    # LoRA
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (PEFT) instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "modules to adapt: 'all-linear' or a comma-separated list (e.g. q_proj,v_proj)"})
    merge_lora: bool = field(default=False, metadata={"help": "save the merged model instead of the adapter"})
    # distributed
    num_procs: int = field(default=1, metadata={"help": "ranks per machine (CPU: gloo backend)"})
    launcher: str = field(default="deepspeed", metadata={"help": "deepspeed | accelerate (accelerate launch)"})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "your accelerate config file (DeepSpeed or FSDP); unset = generated from the options here"})
    num_machines: int = field(default=1, metadata={"help": "machines taking part (accelerate launcher)"})
    machine_rank: int = field(default=0, metadata={"help": "this machine's rank, 0 = the main one"})
    main_process_ip: str = field(default="127.0.0.1", metadata={"help": "address of machine rank 0"})
    main_process_port: int = field(default=0, metadata={"help": "rendezvous port (0 = free port / 29500)"})
    hostfile: str | None = field(default=None, metadata={"help": "DeepSpeed hostfile for several machines"})
    # checkpoints
    resume: bool = field(default=False, metadata={"help": "resume from the newest checkpoint if one exists"})

    def __post_init__(self):
        for alias, name in _ALIASES.items():
            if getattr(self, alias) is not None:
                setattr(self, name, getattr(self, alias))
                setattr(self, alias, None)
        if self.data_seed is None:
            self.data_seed = self.seed
        if not self.save_steps and str(getattr(self.save_strategy, "value", self.save_strategy)) == "steps":
            self.save_strategy = "epoch"  # save_steps 0 = a checkpoint per epoch
        self._check()
        if self.deepspeed == "zero2":
            self.deepspeed = str(ZERO2_CONFIG)
        if isinstance(self.deepspeed, str) and not self.deepspeed.startswith("{") and \
                not Path(self.deepspeed).is_file():
            raise ValueError(f"DeepSpeed config {self.deepspeed!r} not found (use 'zero2' for the shipped ZeRO-2 one)")
        super().__post_init__()

    def _check(self) -> None:
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1 or self.num_procs < 1:
            raise ValueError("batch_size, grad_accum and num_procs must be >= 1")
        if self.learning_rate <= 0 or (self.num_train_epochs <= 0 and self.max_steps <= 0):
            raise ValueError("need learning_rate > 0 and epochs > 0 (or max_steps > 0)")
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError("max_prompt_tokens and max_response_tokens must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError("warmup_ratio / warmup_steps must be >= 0")
        if self.merge_lora and not self.lora:
            raise ValueError("merge_lora needs lora")
        if self.launcher not in ("deepspeed", "accelerate"):
            raise ValueError(f"launcher must be deepspeed or accelerate, got {self.launcher!r}")
        if self.num_machines < 1 or not 0 <= self.machine_rank < self.num_machines:
            raise ValueError("need num_machines >= 1 and 0 <= machine_rank < num_machines")
        if self.num_machines > 1 and self.launcher != "accelerate":
            raise ValueError("num_machines > 1 is for --launcher accelerate; the deepspeed launcher takes --hostfile")
        if self.hostfile and self.launcher != "deepspeed":
            raise ValueError("--hostfile is for the deepspeed launcher")
        if self.hostfile and not Path(self.hostfile).is_file():
            raise ValueError(f"hostfile {self.hostfile!r} not found")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise ValueError(f"accelerate config {self.accelerate_config!r} not found")
        if self.distributed and not self.deepspeed and not self.accelerate_config:
            raise ValueError("a multi-rank run needs a DeepSpeed config (e.g. --deepspeed zero2) or, with "
                             "--launcher accelerate, your own --accelerate_config (FSDP)")

    @cached_property
    def _setup_devices(self):
        """Devices (and a process group under a launcher) are set up only for the copy a Trainer runs with
        (``for_trainer``): a config built in the CLI, a job worker or on a rank before its backend is
        ready stays a plain description."""
        if _FOR_TRAINER.get():
            return TrainingArguments._setup_devices.func(self)
        import torch

        self.distributed_state, self._n_gpu = None, 0
        return torch.device("cpu")

    def for_trainer(self, **changes) -> TrainConfig:
        """The copy a ``Trainer`` runs with (e.g. ``output_dir``), devices set up."""
        token = _FOR_TRAINER.set(True)
        try:
            return dataclasses.replace(self, **changes)
        finally:
            _FOR_TRAINER.reset(token)

    @property
    def distributed(self) -> bool:
        """Runs under a launcher (even one rank: DeepSpeed needs its launcher)."""
        return bool(self.deepspeed or self.accelerate_config or self.hostfile or self.num_procs > 1
                    or self.num_machines > 1 or self.launcher == "accelerate")

    @property
    def target_modules(self) -> str | list[str]:
        mods = self.lora_target_modules
        return mods if mods == "all-linear" else [m.strip() for m in mods.split(",") if m.strip()]

    def resolved(self, chat_model: bool) -> TrainConfig:
        """A copy with options that depend on the model decided (see ``AltTrainConfig``)."""
        return self

    def to_dict(self) -> dict:
        """The options that differ from this config's defaults, JSON-ready; ``type(self)(**d)`` rebuilds it."""
        mine, default = _plain(self), _plain(_defaults(type(self)))
        return {k: v for k, v in mine.items() if v != default.get(k) and k != "output_dir"}

    def full_dict(self) -> dict:
        """Every option (the exact record saved with a model version)."""
        return _plain(self)


def _defaults(cls: type) -> TrainConfig:
    return cls()


def _plain(config: TrainingArguments) -> dict:
    out = {}
    for f in dataclasses.fields(config):
        if not f.init or f.name.endswith("_token"):
            continue
        value = getattr(config, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, list):
            value = [v.value if isinstance(v, enum.Enum) else v for v in value]
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        try:
            json.dumps(value)
        except TypeError:
            value = str(value)
        out[f.name] = value
    return out


@dataclass
class AltTrainConfig(TrainConfig):
    """ALT (conditional SFT): ``L = NLL(y|f,x) + beta * KL(p_ref(.|x) || p(.|f,x)) - alpha * H(p(.|f,x))``.

        alpha: entropy bonus weight.
        beta: KL weight against the frozen reference model seeing the prompt without feedback.
            ``None`` = auto: 0 for a chat/instruct model (tokenizer has a chat template),
            0.05 for a plain pretrained model. 0 means no reference model is loaded at all.
    Everything else: ``TrainConfig``.
    """

    objective: ClassVar[str] = "alt"

    alpha: float = field(default=0.06, metadata={"help": "entropy bonus weight (alpha)"})
    beta: float | None = field(default=None, metadata={
        "help": "KL weight (beta) against the unconditioned reference; unset = auto (0 for instruct models, "
                "0.05 for plain pretrained); 0 loads no reference model"})

    def __post_init__(self):
        if self.alpha < 0 or (self.beta is not None and self.beta < 0):
            raise ValueError("alpha and beta must be >= 0")
        super().__post_init__()

    def resolved(self, chat_model: bool) -> AltTrainConfig:
        """A copy with ``beta`` decided (instruct/chat start → 0, plain pretrained → 0.05)."""
        beta = self.beta if self.beta is not None else (0.0 if chat_model else DEFAULT_BETA_PRETRAINED)
        return dataclasses.replace(self, beta=beta)
