"""LightningModule: training objectives, SAKURA evaluation, and the study's switches.

``salmonn-pl fit`` trains the LoRA/Q-Former/projection with the objectives in
:mod:`salmonn_pl.training.objectives`; ``salmonn-pl test`` generates an answer per question,
judges it, appends it to ``predictions.jsonl`` as it goes (a re-run resumes), and writes
metrics, the report and the SAKURA-format result files at the end.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.processors import LogitsProcessorSettings, build_logits_processors
from salmonn_pl.model.checkpoint import trainable_state_dict
from salmonn_pl.model.llm import set_lora_scale
from salmonn_pl.data.variants import Ablation
from salmonn_pl.model.salmonn import PaddingSide, Salmonn, SalmonnConfig
from salmonn_pl.training.objectives import Objectives, margin_penalty
from salmonn_pl.training.schedule import OptimSettings, build_optimizer


class SalmonnModule(L.LightningModule):
    def __init__(
        self,
        model: SalmonnConfig,
        generation: GenerationSettings | None = None,
        logits_processors: LogitsProcessorSettings | None = None,
        padding_side: PaddingSide = "left",
        ablation: Ablation = "none",
        lora_scale: float = 1.0,
        judge: Any = None,
        output_dir: str = "outputs/run",
        run_name: str = "",
        objectives: Objectives | None = None,
        optim: OptimSettings | None = None,
    ):
        """
        Args:
            model: the SALMONN files and architecture options.
            generation: decoding settings (defaults = the official decode config).
            logits_processors: transformers logits processors applied while decoding.
            padding_side: "left" (batch-invariant, default) or "right" (the official layout).
            ablation: encoder ablation applied to every question of the run.
            lora_scale: multiplier of the trained LoRA scaling at test time (activation tuning).
            judge: a judge object (``RuleJudge`` by default, or ``LLMJudge``).
            output_dir: where predictions, metrics and the report are written.
            run_name: the run's row name in reports (default: the output directory's name).
            objectives: training objectives and their weights.
            optim: AdamW + warm-up/cosine schedule settings.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["judge"])
        self.model_config = model
        self.generation = generation or GenerationSettings()
        self.processor_settings = logits_processors or LogitsProcessorSettings()
        self.padding_side = padding_side
        self.ablation = ablation
        self.lora_scale = lora_scale
        self.judge = judge
        self.output_dir = Path(output_dir)
        self.run_name = run_name or self.output_dir.name
        self.objectives = objectives or Objectives()
        self.optim = optim or OptimSettings()
        self.salmonn: Salmonn | None = None
        # Lightning checkpoints hold only the trainable weights (see on_save_checkpoint).
        self.strict_loading = False

    def configure_model(self) -> None:
        if self.salmonn is None:
            self.salmonn = Salmonn(self.model_config)
            if self.lora_scale != 1.0:
                set_lora_scale(self.salmonn.llm, self.lora_scale)

    # -- shared ------------------------------------------------------------------------------
    def encode(self, batch: dict, ablation: Ablation | None = None) -> torch.Tensor | None:
        ablation = ablation or self.ablation
        if ablation == "no_audio":
            return None
        out = self.salmonn.encode_audio(
            batch["spectrogram"],
            batch.get("raw_wav"),
            batch.get("padding_mask"),
            batch.get("wav_lengths"),
            ablation=ablation,
        )
        return out["audio_tokens"]

    # -- fit -----------------------------------------------------------------------------------
    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self.salmonn
        audio = self.encode(batch)
        inputs = m.assemble(batch["prompt"], audio, batch["text"], self.padding_side)
        logp, n = m.target_logprobs(m.llm_logits(inputs), inputs.labels)
        losses = {"loss_lm": -logp.sum() / n.sum().clamp(min=1)}
        loss = self.objectives.lm_weight * losses["loss_lm"]
        if self.objectives.prior_contrast_weight > 0:
            text_inputs = m.assemble(batch["prompt"], None, batch["text"], self.padding_side)
            logp_text, _ = m.target_logprobs(m.llm_logits(text_inputs), text_inputs.labels)
            penalty, gain = margin_penalty(logp, logp_text, n, self.objectives.margin)
            losses.update(loss_prior=penalty, audio_gain=gain)
            loss = loss + self.objectives.prior_contrast_weight * penalty
        losses["loss"] = loss
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        bs = len(batch["prompt"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=bs, sync_dist=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = self._losses(batch)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=len(batch["prompt"]), sync_dist=True)

    def configure_optimizers(self):
        total = max(1, int(self.trainer.estimated_stepping_batches))
        optimizer, scheduler = build_optimizer(self.salmonn, self.optim, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen encoders and the base LLM are never saved: a 13B model's checkpoint stays tens of MB.
        checkpoint["state_dict"] = {f"salmonn.{k}": v for k, v in trainable_state_dict(self.salmonn).items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from salmonn_pl.model.checkpoint import PAD_ROW_KEYS
        from salmonn_pl.model.llm import set_pad_rows

        self.configure_model()
        state = checkpoint["state_dict"]
        rows = [state.pop(f"salmonn.{k}", None) for k in PAD_ROW_KEYS]
        if all(r is not None for r in rows):
            set_pad_rows(self.salmonn.llm, *rows)

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, batch: dict, ablation: Ablation | None = None, padding_side: PaddingSide | None = None) -> list[str]:
        """Generated answers (special tokens removed) for every row of ``batch``."""
        m = self.salmonn
        audio = self.encode(batch, ablation)
        processors = build_logits_processors(
            self.processor_settings, m.tokenizer, batch["prompt"], self.generation.num_beams, self.device
        )
        result = m.generate(batch["prompt"], audio, self.generation, padding_side or self.padding_side, processors)
        return [m.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in result.sequences]

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        responses = self.answer(batch)
        return [{"id": i, "prompt": p, "response": r} for i, p, r in zip(batch["id"], batch["prompt"], responses)]

    # -- test: SAKURA evaluation -----------------------------------------------------------------
    def on_test_start(self) -> None:
        from salmonn_pl.eval.evaluation import Evaluation

        self.evaluation = Evaluation(
            output_dir=self.output_dir,
            run_name=self.run_name,
            judge=self.judge,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
            settings={"ablation": self.ablation, "padding_side": self.padding_side, "generation": asdict(self.generation)},
        )
        self._t0, self._answered = time.perf_counter(), 0

    def test_step(self, batch: dict, batch_idx: int) -> None:
        todo = self.evaluation.pending(batch)
        if todo:
            sub = select_rows(batch, todo)
            responses = self.answer(sub)
            self.evaluation.record(sub, responses)
            self._answered += len(todo)
        rate = self._answered / max(1e-9, time.perf_counter() - self._t0)
        self.log("questions_per_s", rate, prog_bar=True, batch_size=len(batch["id"]), on_step=True, on_epoch=False)

    def on_test_epoch_end(self) -> None:
        self.evaluation.finish(self.trainer, self.logger)


def select_rows(batch: dict, rows: list[int]) -> dict:
    """The sub-batch made of ``rows`` (tensors indexed, lists picked)."""
    index = torch.tensor(rows, dtype=torch.long)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list):
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out
