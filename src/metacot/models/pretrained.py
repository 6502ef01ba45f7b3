"""`model=pretrained model.path=DIR`: a local Hugging Face causal LM and its tokenizer (no downloads)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


class PretrainedFactory:
    """Loads a causal LM saved with `save_pretrained` (or an `sft/hf/` export) from a local directory.

    Pretrained weights come with their own vocabulary: tokenize with `load_tokenizer()`.
    """

    def __init__(self, path: str | None = None, name: str = "pretrained", dtype: str | None = None):
        self.path = path
        self.name = name
        self.dtype = dtype

    def directory(self) -> Path:
        if not self.path:
            raise ValueError(
                "model=pretrained needs a local model directory: pass model.path=/path/to/model_dir "
                "(a folder with config.json and weights, as written by save_pretrained)"
            )
        path = Path(self.path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"model.path={self.path} is not a directory: pass model.path=/path/to/model_dir, "
                "a local folder written by save_pretrained (nothing is downloaded)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path={self.path} has no config.json, so it is not a Hugging Face model directory: "
                "pass the folder that save_pretrained wrote (config.json + model.safetensors)"
            )
        return path

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        path = self.directory()
        try:
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"no tokenizer could be loaded from model.path={self.path} ({err}); save the tokenizer "
                "next to the model with tokenizer.save_pretrained(model_dir)"
            ) from err

    def build(
        self, tokenizer: PreTrainedTokenizerBase | None = None, max_seq_len: int | None = None
    ) -> PreTrainedModel:
        path = self.directory()
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, attn_implementation="sdpa", dtype=self.dtype or "auto"
        )
        limit = getattr(model.config, "n_positions", None) or getattr(
            model.config, "max_position_embeddings", None
        )
        if max_seq_len is not None and limit is not None and max_seq_len > limit:
            raise ValueError(
                f"the model at {path} handles at most {limit} positions but max_seq_len={max_seq_len}: "
                "use shorter sequences or a model with a longer context"
            )
        if tokenizer is not None:
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
            if model.config.pad_token_id is None:
                pad = tokenizer.pad_token_id
                model.config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
        # from_pretrained returns eval mode; a factory's model is for training (as a freshly built one
        # is): left in eval mode, SFT would run without the checkpoint's dropout (evaluators call .eval())
        return model.train()
