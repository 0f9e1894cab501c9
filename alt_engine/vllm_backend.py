"""vLLM sampling backend (GPU extra: ``pip install -r requirements-gpu.txt``).

Same interface as ``TransformersBackend``: token-id inputs in, ``n`` samples
each out; ``finish_reason == "length"`` marks a truncated sample.
"""

from __future__ import annotations

from .backend_types import Sample, SamplingParams


class VLLMBackend:
    name = "vllm"
    supports_guidance = False  # ``sampling.check_guidance`` refuses guided sampling up front

    def __init__(self, model_path: str, gpu_memory_utilization: float = 0.5, **kw):
        from vllm import LLM  # imported here: the extra is optional

        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, **kw)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, inputs, params: SamplingParams, progress=None, negatives=None):
        if params.guidance:  # vLLM computes one input's logits per sequence: no second conditioning per step
            raise ValueError("the vllm backend does not support feedback guidance (it needs the logits of two inputs "
                             "per step): use --guidance 0, or the transformers backend")
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        banned = {"logit_bias": {t: -100.0 for t in params.suppress_tokens}} if params.suppress_tokens else {}
        vparams = VParams(n=params.n, temperature=params.temperature, top_p=params.top_p if params.temperature else 1.0,
                          max_tokens=params.max_new_tokens, seed=params.seed, **banned)
        results = self.llm.generate([TokensPrompt(prompt_token_ids=list(x)) for x in inputs], vparams,
                                    use_tqdm=progress is None)
        out = []
        for x, res in zip(inputs, results):
            out.append([Sample(list(o.token_ids), o.text, o.finish_reason == "length", len(x), params.seed)
                        for o in res.outputs])
        if progress:
            progress(len(inputs) * params.n, len(inputs) * params.n)
        return out
