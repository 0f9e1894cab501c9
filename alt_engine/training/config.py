"""Training options for ALT (conditional SFT), one dataclass parsed by the CLI with ``HfArgumentParser``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BETA_PRETRAINED = 0.05  # DESIGN §1: KL weight when starting from a plain pretrained model


@dataclass
class AltTrainConfig:
    """Configuration of one ALT training run (defaults follow the paper, DESIGN.md §1).

    Loss (``L = NLL(y|f,x) + beta * KL(p_ref(.|x) || p(.|f,x)) - alpha * H(p(.|f,x))``):
        alpha: entropy bonus weight.
        beta: KL weight against the frozen reference model seeing the prompt without feedback.
            ``None`` = auto: 0 for a chat/instruct model (tokenizer has a chat template),
            0.05 for a plain pretrained model. 0 means no reference model is loaded at all.
    Optimisation:
        learning_rate, epochs, warmup_ratio, lr_scheduler_type, weight_decay, max_grad_norm,
        batch_size (per device), grad_accum, max_steps (overrides epochs when > 0), seed, bf16,
        gradient_checkpointing.
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
        logging_steps, save_steps (0 = a checkpoint per epoch), report_to (TensorBoard by default).
    """

    # loss
    alpha: float = field(default=0.06, metadata={"help": "entropy bonus weight (alpha)"})
    beta: float | None = field(default=None, metadata={
        "help": "KL weight (beta) against the unconditioned reference; unset = auto (0 for instruct models, "
                "0.05 for plain pretrained); 0 loads no reference model"})
    # optimisation
    learning_rate: float = field(default=5e-5, metadata={
        "help": "peak learning rate; 5e-5 full fine-tuning steers a 135M chat model within a few rounds (DESIGN.md "
                "§1 placement experiment); the paper used 1e-5 to 2e-5 on larger models"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the data pool per round"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    batch_size: int = field(default=8, metadata={"help": "examples per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1 = use epochs)"})
    seed: int = field(default=0, metadata={"help": "random seed (data order, initialisation of LoRA)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for activation memory"})
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
    deepspeed: str | None = field(default=None, metadata={
        "help": "DeepSpeed config JSON path, or 'zero2' for the shipped ZeRO-2 config"})
    num_procs: int = field(default=1, metadata={"help": "ranks per machine (CPU: gloo backend)"})
    launcher: str = field(default="deepspeed", metadata={"help": "deepspeed | accelerate (accelerate launch)"})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "your accelerate config file (DeepSpeed or FSDP); unset = generated from the options here"})
    num_machines: int = field(default=1, metadata={"help": "machines taking part (accelerate launcher)"})
    machine_rank: int = field(default=0, metadata={"help": "this machine's rank, 0 = the main one"})
    main_process_ip: str = field(default="127.0.0.1", metadata={"help": "address of machine rank 0"})
    main_process_port: int = field(default=0, metadata={"help": "rendezvous port (0 = free port / 29500)"})
    hostfile: str | None = field(default=None, metadata={"help": "DeepSpeed hostfile for several machines"})
    # checkpoints and logging
    resume: bool = field(default=False, metadata={"help": "resume from the newest checkpoint if one exists"})
    logging_steps: int = field(default=1, metadata={"help": "log every N optimizer steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = every epoch)"})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard | none"})

    def __post_init__(self):
        if self.alpha < 0 or (self.beta is not None and self.beta < 0):
            raise ValueError("alpha and beta must be >= 0")
        if self.batch_size < 1 or self.grad_accum < 1 or self.num_procs < 1:
            raise ValueError("batch_size, grad_accum and num_procs must be >= 1")
        if self.learning_rate <= 0 or (self.epochs <= 0 and self.max_steps <= 0):
            raise ValueError("need learning_rate > 0 and epochs > 0 (or max_steps > 0)")
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError("max_prompt_tokens and max_response_tokens must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
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
        if (self.distributed and not self.deepspeed and not self.accelerate_config):
            raise ValueError("a multi-rank run needs a DeepSpeed config (e.g. --deepspeed zero2) or, with "
                             "--launcher accelerate, your own --accelerate_config (FSDP)")
        if self.deepspeed == "zero2":
            from . import ZERO2_CONFIG

            self.deepspeed = str(ZERO2_CONFIG)
        if self.deepspeed and not Path(self.deepspeed).is_file():
            raise ValueError(f"DeepSpeed config {self.deepspeed!r} not found (use 'zero2' for the shipped ZeRO-2 one)")

    @property
    def distributed(self) -> bool:
        """Runs under a launcher (even one rank: DeepSpeed needs its launcher)."""
        return bool(self.deepspeed or self.accelerate_config or self.hostfile or self.num_procs > 1
                    or self.num_machines > 1 or self.launcher == "accelerate")

    def resolved(self, chat_model: bool) -> AltTrainConfig:
        """A copy with ``beta`` decided (instruct/chat start → 0, plain pretrained → 0.05)."""
        beta = self.beta if self.beta is not None else (0.0 if chat_model else DEFAULT_BETA_PRETRAINED)
        return dataclasses.replace(self, beta=beta)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def target_modules(self) -> str | list[str]:
        mods = self.lora_target_modules
        return mods if mods == "all-linear" else [m.strip() for m in mods.split(",") if m.strip()]
