"""LightningModule: training objectives, SAKURA evaluation, and the study's switches.

``salmonn-pl fit`` trains the LoRA/Q-Former/projection with the objectives in
:mod:`salmonn_pl.training.objectives`; ``salmonn-pl test`` generates an answer per question,
judges it, appends it to ``predictions.jsonl`` as it goes (a re-run resumes), and writes
metrics, the report and the SAKURA-format result files at the end. Before any work it takes the
output directory's lock and compares the run with the one that wrote the directory (``run.json``):
only the same run resumes. A question without an answer (non-finite output, or a failure under the
data's ``on_error: skip``) is stored as an error record, never judged nor counted.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from salmonn_pl.data.collate import AudioBatch
from salmonn_pl.data.variants import Ablation
from salmonn_pl.eval.fingerprint import check_run, weight_digests
from salmonn_pl.eval.judge_rule import Judge, RuleJudge
from salmonn_pl.eval.predictions import has_predictions
from salmonn_pl.eval.run_lock import OutputDirLock
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.decoder import Decoder, DecodeInputs, Generate
from salmonn_pl.generation.format_forcing import FormatForcingSettings, format_forcing_processor
from salmonn_pl.generation.processors import LogitsProcessorSettings, build_logits_processors, make_logits_processors
from salmonn_pl.model.checkpoint import PAD_ROW_KEYS
from salmonn_pl.model.llm import set_lora_scale, set_pad_rows
from salmonn_pl.model import audio_encoding
from salmonn_pl.model.audio_encoding import CarriedAudioTokens
from salmonn_pl.model.family import (
    AudioLLM,
    FamilyQuestion,
    family_of,
    is_family_config,
    questions_from_batch,
    shown_questions,
)
from salmonn_pl.model.qwen2_audio import Qwen2AudioConfig
from salmonn_pl.model.salmonn import AudioTokens, PaddingSide, Salmonn, SalmonnConfig
from salmonn_pl.settings_check import SettingError, at_least, require
from salmonn_pl.training.checkpointing import (
    check_trainable_state,
    plain,
    plain_hyperparameters,
    trainable_checkpoint_state,
    trainable_names,
)
from salmonn_pl.training.divergence import (
    check_finite_gradients,
    check_finite_loss,
    check_finite_state,
    gradient_norm,
    where,
)
from salmonn_pl.training.objectives import Objectives, kl_to_uniform, lm_loss, margin_penalty, text_only_accuracy
from salmonn_pl.training.option_prior import option_logprobs, text_only_option_logprobs
from salmonn_pl.training.rng import seeded_rng, step_seed
from salmonn_pl.training.schedule import OptimSettings, build_optimizer

# Count of questions behind text_only_acc, returned by _losses for weighting the log (not logged).
TEXT_ONLY_KNOWN = "text_only_known"

log = logging.getLogger(__name__)

# Module settings that change no answer: where results go, the judge (checked on its own), fit-only ones.
NOT_ANSWER_SETTINGS = ("output_dir", "run_name", "judge", "objectives", "optim", "dropout_seed")
# Data settings that change no answer (batch_size neither under left padding, which is batch-invariant).
NOT_ANSWER_DATA = ("num_workers", "on_error")
# Module attributes holding an argument's resolved value (None defaults filled in).
_RESOLVED = {"model": "model_config", "logits_processors": "processor_settings", "decoder": "decoder_config"}


class QuestionFailed(RuntimeError):
    """Answering one question failed (``on_error: raise``); the message names it."""


class BrokenRun(RuntimeError):
    """Every question of a batch failed: the model or the run's settings are broken, not a question."""


class SalmonnModule(L.LightningModule):
    def __init__(
        self,
        model: SalmonnConfig | Qwen2AudioConfig,
        generation: GenerationSettings | None = None,
        logits_processors: LogitsProcessorSettings | None = None,
        decoder: Decoder | None = None,
        format_forcing: FormatForcingSettings | None = None,
        padding_side: PaddingSide = "left",
        ablation: Ablation = "none",
        lora_scale: float = 1.0,
        judge: Judge | None = None,
        output_dir: str = "outputs/run",
        run_name: str = "",
        objectives: Objectives | None = None,
        optim: OptimSettings | None = None,
        dropout_seed: int | None = None,
    ):
        """
        Args:
            model: the SALMONN files and architecture options, or another model family's
                (``Qwen2AudioConfig``: ``qwen2_audio_path`` names a Qwen2-Audio checkpoint).
            generation: decoding settings (defaults = the official decode config).
            logits_processors: transformers logits processors applied while decoding.
            decoder: how answers are produced, with its settings (:mod:`salmonn_pl.generation.decoder`):
                ``Generate`` (default, the official decoding), ``DiverseBeam`` (similarity penalty between
                beams), ``Contrastive`` (audio-contrastive decoding), or ``OptionScoring`` (rank the options
                by likelihood; no free generation).
            format_forcing: force answers to start with one of the option labels.
            padding_side: "left" (batch-invariant, default) or "right" (the official layout).
            ablation: encoder ablation applied to every question of the run.
            lora_scale: multiplier of the trained LoRA scaling at test time (activation tuning).
            judge: a judge object (``RuleJudge`` by default, or ``LLMJudge``).
            output_dir: where predictions, metrics and the report are written.
            run_name: the run's row name in reports (default: the output directory's name).
            objectives: training objectives and their weights.
            optim: AdamW + warm-up/cosine schedule settings.
            dropout_seed: seed of the training dropout streams, drawn per (rank, epoch, batch) so that a
                resumed fit repeats an uninterrupted one exactly; ``None`` takes the run's seed
                (``seed_everything``) at fit start. Kept in checkpoints.
        """
        super().__init__()
        check_module_arguments(lora_scale)
        self.save_hyperparameters(ignore=["judge"])
        self.model_config = model
        self.generation = generation or GenerationSettings()
        self.processor_settings = logits_processors or LogitsProcessorSettings()
        self.decoder = decoder or Generate()
        if isinstance(self.hparams.get("decoder"), Decoder):  # built in Python: keep hyperparameters plain
            self.hparams["decoder"] = self.decoder.config()
        self.format_forcing = format_forcing
        self.padding_side = padding_side
        self.ablation = ablation
        self.lora_scale = lora_scale
        self.judge = judge
        self.output_dir = Path(output_dir)
        self.run_name = run_name or self.output_dir.name
        self.objectives = objectives or Objectives()
        self.optim = optim or OptimSettings()
        self.dropout_seed = dropout_seed
        self.salmonn: Salmonn | None = None
        self.family_model: AudioLLM | None = None  # a model family other than SALMONN (model/family.py)
        self.carried_audio = CarriedAudioTokens()  # the previous evaluation batch's audio tokens
        self.output_lock = OutputDirLock(self.output_dir)  # held by rank 0 while testing
        # Lightning checkpoints hold only the trainable weights (see on_save_checkpoint).
        self.strict_loading = False

    @property
    def family(self) -> str:
        """The model family's name, as reports show it."""
        return family_of(self.model_config)

    def configure_model(self) -> None:
        if is_family_config(self.model_config):
            if self.family_model is None:
                self.check_family_settings()
                self.family_model = self.model_config.build()
            return
        if self.salmonn is None:
            self.salmonn = Salmonn(self.model_config)
            if self.lora_scale != 1.0:
                set_lora_scale(self.salmonn.llm, self.lora_scale)

    def check_family_settings(self, datamodule=None) -> None:
        """:func:`check_family_arguments`, and the data module's variants against the family."""
        check_family_arguments(self.model_config, self.ablation, self.padding_side, self.lora_scale,
                               self.format_forcing, self.decoder)
        for variant in getattr(datamodule, "variants", None) or ():
            self.model_config.model_class.check_variant(variant.name, variant.params(), self.model_config.max_audio_seconds)

    def setup(self, stage: str) -> None:
        if not is_family_config(self.model_config):
            return
        if stage == "fit" and self.model_config.adapters is None:
            raise ValueError(f"model.model.adapters is null: {self.family}'s weights are frozen, so there is "
                             "nothing to fine-tune; set adapters (LoRA, e.g. {rank: 8})")
        self.check_family_settings(getattr(self.trainer, "datamodule", None) if self._trainer else None)

    # -- shared ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SalmonnModule:
        """Leaving or entering evaluation forgets the carried audio tokens: training changes the
        weights that made them."""
        self.carried_audio = CarriedAudioTokens()
        return super().train(mode)

    def row_ablations(self, batch: dict, ablation: Ablation | None = None) -> list[str]:
        """Each row's ablation: the variant's own (``meta["variant_params"]["ablation"]``), else the run's."""
        default = ablation or self.ablation
        metas = batch.get("meta") or [{}] * len(batch["prompt"])
        own = [(m.get("variant_params") or {}).get("ablation", "none") for m in metas]
        return [name if name != "none" else default for name in own]

    def encode(self, batch: dict, ablation: Ablation | None = None) -> AudioTokens:
        """Audio tokens for every row: a tensor, a list of per-row tensors (long audio, text-only rows
        among others), or ``None`` when every row is text-only.

        Evaluating, every distinct audio of the batch (``meta["audio_key"]``) is encoded once, by the
        encoders its rows' ablations keep (:func:`~salmonn_pl.model.audio_encoding.encode_audio_shared`), and an audio already
        encoded for the previous batch (a clip whose questions straddle the two) is not encoded again;
        the tokens are those of encoding row by row. Training encodes row by row, so that every row
        draws its own Q-Former dropout.
        """
        ablations = self.row_ablations(batch, ablation)
        audio = AudioBatch.of(batch)
        if self.training:
            return audio_encoding.encode_audio_per_ablation(self.salmonn, audio, ablations)
        metas = batch.get("meta") or [{}] * len(ablations)
        keys = [meta.get("audio_key") for meta in metas]
        return audio_encoding.encode_audio_shared(self.salmonn, audio, ablations, keys, carry=self.carried_audio)

    # -- fit -----------------------------------------------------------------------------------
    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every objective term of the batch (for logging) and their weighted sum ``"loss"``."""
        m, objectives = self.salmonn, self.objectives
        if self.family_model is not None:
            questions = questions_from_batch(batch, self.row_ablations(batch))
            logp, n = self.family_model.answer_log_likelihoods(questions, batch["text"])
        else:
            inputs = m.assemble(batch["prompt"], self.encode(batch), batch["text"], self.padding_side)
            logp, n = m.answer_logprobs(inputs)
        losses = {"loss_lm": lm_loss(logp, n)}
        loss = objectives.lm_weight * losses["loss_lm"]
        if objectives.prior_contrast_weight > 0:
            losses.update(self._prior_contrast(batch, logp, n))
            loss = loss + objectives.prior_contrast_weight * losses["loss_prior"]
        losses["loss"] = loss
        return losses

    def _prior_contrast(self, batch: dict, logp_audio: torch.Tensor, n_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prior-contrast term ``loss_prior`` and its diagnostics, from a text-only pass over the batch."""
        m, objectives = self.salmonn, self.objectives
        family = self.family_model
        if objectives.prior_contrast_kind == "margin":
            if family is not None:
                logp_text, _ = family.answer_log_likelihoods(text_only(batch), batch["text"])
            else:
                text_inputs = m.assemble(batch["prompt"], None, batch["text"], self.padding_side)
                logp_text, _ = m.answer_logprobs(text_inputs)
            penalty, gain = margin_penalty(logp_audio, logp_text, n_tokens, objectives.margin)
            return {"loss_prior": penalty, "audio_gain": gain}
        if family is not None:
            asked = text_only(batch)

            def score(rows: list[int], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
                return family.answer_log_likelihoods([asked[row] for row in rows], answers)

            questions = [q.text for q in asked]
            options = option_logprobs(score, questions, questions, batch["text"])
        else:
            options = text_only_option_logprobs(m, batch["prompt"], shown_questions(batch), batch["text"], self.padding_side)
        # Every batch logs the same keys (ranks that disagree would hang a synced log); text_only_acc
        # is weighted by the questions whose answer is known, so batches without any count for nothing.
        no_answer = {"text_only_acc": logp_audio.new_zeros(()), TEXT_ONLY_KNOWN: logp_audio.new_zeros(())}
        if options is None:
            # No multiple-choice question in the batch: the term is zero (kept in the graph for DDP).
            return {"loss_prior": logp_audio.sum() * 0.0, **no_answer}
        terms = {"loss_prior": kl_to_uniform(options.logps, options.lengths, options.valid), **no_answer}
        accuracy = text_only_accuracy(options.logps.detach(), options.lengths, options.valid, options.answers)
        if accuracy is not None:
            terms.update({"text_only_acc": accuracy, TEXT_ONLY_KNOWN: (options.answers >= 0).sum()})
        return terms

    def _log_losses(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int, **kwargs) -> None:
        known = losses.pop(TEXT_ONLY_KNOWN, None)
        for name, value in losses.items():
            weight = int(known) if name == "text_only_acc" else batch_size
            self.log(f"{stage}/{name}", value, batch_size=weight, **kwargs)

    def on_fit_start(self) -> None:
        # The dropout streams derive from the run's seed (seed_everything's, when set); a resumed run
        # gets it back from its checkpoint, and every rank uses rank 0's.
        if self.dropout_seed is None:
            self.dropout_seed = int(self.trainer.strategy.broadcast(torch.initial_seed(), src=0))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        seed = step_seed(self.dropout_seed or 0, self.global_rank, self.current_epoch, batch_idx)
        with seeded_rng(seed, self.device):
            losses = self._losses(batch)
        bs = len(batch["prompt"])
        loss = losses["loss"]
        # Every rank decides together (one rank raising alone would leave the others waiting in backward).
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True)
        self._batch_idx = batch_idx
        check_finite_loss(finite, losses, where(self.trainer.global_step, self.current_epoch, batch_idx))
        self._log_losses("train", losses, bs, prog_bar=True, sync_dist=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # After backward (and the DDP all-reduce, and AMP's unscale), before clipping and the step.
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 GradScaler: infinite gradients are expected, the scaler skips that step itself
        trainable = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        norm = gradient_norm(p for _, p in trainable)
        if norm is None:
            return
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(norm)), all=True)
        place = where(self.trainer.global_step, self.current_epoch, getattr(self, "_batch_idx", None))
        check_finite_gradients(trainable, finite, float(norm), place)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._log_losses("val", self._losses(batch), len(batch["prompt"]), sync_dist=True)

    def configure_optimizers(self):
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError("the warm-up/cosine learning-rate schedule needs the number of optimiser steps: "
                             "set trainer.max_steps (or a finite trainer.max_epochs)")
        total = max(1, int(steps))
        if self.optim.warmup_steps >= total:
            rank_zero_warn(f"optim.warmup_steps ({self.optim.warmup_steps}) >= the run's {total} optimiser steps: the "
                           f"learning rate never leaves the warm-up (never reaches optim.lr {self.optim.lr})")
        model = self.family_model if self.family_model is not None else self.salmonn
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"{self.family} has no trainable weights: set model.model.adapters (LoRA, e.g. "
                             "{rank: 8}) to fine-tune it")
        optimizer, scheduler = build_optimizer(model, self.optim, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen encoders and the base LLM are never saved: a 13B model's checkpoint stays tens of MB.
        if "state_dict" in checkpoint and self.family_model is not None:
            keep = trainable_names(self.family_model, "family_model.")
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
            check_finite_state(checkpoint["state_dict"], f"the checkpoint of global step {checkpoint.get('global_step')}")
        elif "state_dict" in checkpoint:  # absent under DeepSpeed, which writes the weights itself
            checkpoint["state_dict"] = trainable_checkpoint_state(checkpoint["state_dict"], self.salmonn, "salmonn.")
            # Raising here stops Lightning before it writes the file.
            check_finite_state(checkpoint["state_dict"], f"the checkpoint of global step {checkpoint.get('global_step')}")
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain_hyperparameters(checkpoint["hyper_parameters"])
        checkpoint["dropout_seed"] = self.dropout_seed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.configure_model()
        if checkpoint.get("dropout_seed") is not None:
            self.dropout_seed = int(checkpoint["dropout_seed"])
        if "state_dict" not in checkpoint:
            return
        state = checkpoint["state_dict"]
        if self.family_model is not None:
            check_trainable_state(state, self.family_model, "family_model.")
            return
        rows = [state.pop(f"salmonn.{k}", None) for k in PAD_ROW_KEYS]
        if all(r is not None for r in rows):
            set_pad_rows(self.salmonn.llm, *rows)
        # Lightning then loads non-strictly (the frozen weights are absent), so check the trainable ones here.
        check_trainable_state(state, self.salmonn, "salmonn.")

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, batch: dict, ablation: Ablation | None = None, padding_side: PaddingSide | None = None) -> list[dict]:
        """One answer per row: ``{"response": text, ...}`` plus per-option scores when scoring options.

        A row whose scores or logits were not finite (NaN/inf: a broken model) also gets ``"error"``:
        its response is no answer and must not be judged.
        """
        if self.family_model is not None:
            family = self.family_model
            asked = questions_from_batch(batch, self.row_ablations(batch, ablation))
            processors = []
            if self.decoder.generates_text:
                processors = make_logits_processors(
                    self.processor_settings, family.answer_token_ids, lambda: family.prompt_token_ids(asked),
                    family.end_of_answer_id, self.generation.num_beams, self.device,
                )
            return self.decoder.answer_family(family, asked, list(batch["id"]), self.generation, processors)
        m, side = self.salmonn, padding_side or self.padding_side
        audio = self.encode(batch, ablation)
        questions = shown_questions(batch)
        processors = []
        if self.decoder.generates_text:
            processors = build_logits_processors(
                self.processor_settings, m.tokenizer, batch["prompt"], self.generation.num_beams, self.device
            )
            if self.format_forcing is not None:
                processors.append(format_forcing_processor(m.tokenizer, questions, self.format_forcing))
        captions = [meta.get("caption") for meta in batch.get("meta") or [{}] * len(questions)]
        inputs = DecodeInputs(batch["prompt"], questions, audio, batch["id"], side, self.generation, processors,
                              captions if any(captions) else None)
        return self.decoder.answer(m, inputs)

    @property
    def decoder_config(self) -> dict:
        """The decoder as ``{"class_path", "init_args"}`` (run fingerprints hold no objects)."""
        return self.decoder.config()

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        answers = self.answer(batch)
        return [{"id": i, "prompt": p, **a} for i, p, a in zip(batch["id"], batch["prompt"], answers)]

    # -- test: SAKURA evaluation -----------------------------------------------------------------
    def answer_fingerprint(self) -> dict:
        """Everything that changes an answer, for ``run.json`` (:mod:`salmonn_pl.eval.fingerprint`):
        the module's settings (model, decoding, processors, padding, ablation, LoRA scale; not where
        results go nor the judge), a digest of every weight file or directory they name, the trainer's
        precision, and the data module's settings (what is asked, and how the audio is prepared)."""
        hparams = {k: v for k, v in self.hparams.items() if k not in NOT_ANSWER_SETTINGS and not k.startswith("_")}
        settings = plain({k: getattr(self, _RESOLVED.get(k, k), v) for k, v in hparams.items()})
        fingerprint = {"module": settings, "weights": weight_digests(plain(self.model_config))}
        trainer = self._trainer
        if trainer is not None:
            fingerprint["precision"] = str(trainer.precision)
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is not None:
                fingerprint["data"] = self._data_settings(datamodule)
        return fingerprint

    def _data_settings(self, datamodule) -> dict:
        settings = dict(getattr(datamodule, "hparams", None) or {})
        if not settings:  # a data module that does not save its hyperparameters: its __init__ arguments it keeps
            names = [n for n in inspect.signature(type(datamodule).__init__).parameters if n != "self"]
            settings = {n: getattr(datamodule, n) for n in names if hasattr(datamodule, n)}
        ignored = set(NOT_ANSWER_DATA) | ({"batch_size"} if self.padding_side == "left" else set())
        kept = {k: v for k, v in settings.items() if k not in ignored and not k.startswith("_")}
        return {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}", **plain(kept)}

    def prepare_data(self) -> None:
        # Before the config is saved and the model loaded: a run that must not start stops here.
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "test" or not trainer.is_global_zero:
            return
        self.output_lock.acquire()
        judge = (self.judge or RuleJudge()).name
        try:
            check_run(self.output_dir, self.answer_fingerprint(), judge, has_predictions(self.output_dir))
        except BaseException:
            self.output_lock.release()
            raise

    def configure_callbacks(self) -> list[L.Callback]:
        return [ReleaseOutputDirLock()]

    def teardown(self, stage: str) -> None:
        self.output_lock.release()

    def on_test_start(self) -> None:
        from salmonn_pl.eval.evaluator import SakuraEvaluator

        self.evaluator = SakuraEvaluator(str(self.output_dir), judge=self.judge, run_name=self.run_name,
                                         model_family=self.family)
        self.evaluator.start(self.global_rank, self.trainer.world_size, self.device)
        self._t0, self._answered = time.perf_counter(), 0
        if self.global_rank == 0:
            self._log_resume()

    def _log_resume(self) -> None:
        done = self.evaluator.answered
        if not done:
            return
        total = _dataset_size(self.trainer.test_dataloaders)
        if total is not None and done >= total:
            log.info(f"resumed: {done} of {total} questions already answered in {self.output_dir}; nothing to do; "
                     f"use a new --model.output_dir (or delete {self.output_dir}) to start over")
        else:
            left = f"{total - done} left" if total is not None else "answering the rest"
            log.info(f"resumed: {done} of {total if total is not None else '?'} questions already answered in "
                     f"{self.output_dir}; {left}")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        todo = self.evaluator.pending(batch["id"], batch["meta"])
        if todo:
            sub = batch if len(todo) == len(batch["id"]) else select_rows(batch, todo)
            answers = self._answers_or_errors(sub)
            errors = [a.get("error") for a in answers]
            # Every question of the batch failed, about at least two different audios: that is the model
            # or the settings, not a question (nor one bad clip); stop before storing errors that a
            # re-run would take as done.
            audios = {meta.get("audio_key") or i for i, meta in zip(sub["id"], sub["meta"])}
            if all(errors) and len(audios) > 1:
                raise BrokenRun(
                    f"every question of test batch {batch_idx} failed ({len(errors)} rows, e.g. {sub['id'][0]}: "
                    f"{errors[0]}); the model or the run's settings are broken, not a question"
                )
            metas = [{**meta, **{k: v for k, v in a.items() if k not in ("response", "error")}}
                     for meta, a in zip(sub["meta"], answers)]
            self.evaluator.add(sub["id"], metas, [a["response"] for a in answers], errors=errors)
            self._answered += len(todo)
        rate = self._answered / max(1e-9, time.perf_counter() - self._t0)
        self.log("questions_per_s", rate, prog_bar=True, batch_size=len(batch["id"]), on_step=True, on_epoch=False)

    def _answers_or_errors(self, batch: dict) -> list[dict]:
        """:meth:`answer`, with a question that makes answering fail handled by the data's
        ``on_error`` policy: ``skip`` records it as an error (reason and id) and goes on, ``raise``
        stops with an error naming it. A failing batch is answered again row by row to find the
        failing question."""
        try:
            return self.answer(batch)
        except torch.cuda.OutOfMemoryError:
            raise  # the batch, not a question
        except Exception as err:
            if len(batch["id"]) > 1:
                return [a for i in range(len(batch["id"])) for a in self._answers_or_errors(select_rows(batch, [i]))]
            question = f"{batch['id'][0]} (variant {batch['meta'][0].get('variant')})"
            datamodule = getattr(self.trainer, "datamodule", None)
            if getattr(datamodule, "on_error", "raise") != "skip":
                raise QuestionFailed(f"question {question}: {type(err).__name__}: {err} "
                                     "(data on_error: skip records it as an error and goes on)") from err
            log.warning(f"skipped question {question}: {type(err).__name__}: {err}")
            return [{"response": "", "error": f"{type(err).__name__}: {err}"}]

    def on_test_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        skipped = getattr(datamodule, "skipped", ())
        counts = self.evaluator.finish(logger=self.loggers, skipped=skipped)
        # Every rank holds the same gathered counts: syncing them changes no value, and without it
        # Lightning warns once per metric key under DDP.
        self.log_dict(self.evaluator.log_dict(counts), sync_dist=True)
        errors = sum(c.errors for c in counts)
        if errors and not any(c.questions for c in counts):
            raise BrokenRun(f"none of the {errors} questions got an answer (every one is an error, listed in "
                            f"{self.output_dir / 'metrics.json'}); the model or the run's settings are broken")


class ReleaseOutputDirLock(L.Callback):
    """Releases the output directory's lock when a test run fails (Lightning calls no module hook
    then), so that a re-run in the same process can take it; the OS releases it when a process ends."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        lock = getattr(pl_module, "output_lock", None)
        if lock is not None:
            lock.release()


def _dataset_size(dataloaders) -> int | None:
    loader = dataloaders[0] if isinstance(dataloaders, (list, tuple)) and dataloaders else dataloaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def check_family_arguments(model, ablation: str = "none", padding_side: str = "left", lora_scale: float = 1.0,
                           format_forcing=None, decoder=None) -> None:
    """Settings written for SALMONN that a family of :mod:`salmonn_pl.model.family` cannot follow raise
    :class:`~salmonn_pl.settings_check.SettingError` naming the setting, before the model loads."""
    family = getattr(model, "model_class", None)
    if family is None:  # SALMONN
        return
    if ablation not in family.ablations:
        raise SettingError(f"ablation {ablation!r} has no meaning for {family.family}, which has one audio encoder; "
                           f"choose one of {list(family.ablations)}")
    unsupported = {
        "padding_side": padding_side != "left",  # the family's processor pads on the left
        "lora_scale": lora_scale != 1.0,
        "format_forcing": format_forcing is not None,
    }
    named = [name for name, is_set in unsupported.items() if is_set]
    if named:
        raise SettingError(f"{', '.join(named)}: SALMONN-only setting(s), not available with {family.family}; "
                           "leave them at their defaults")
    decoder_class = decoder if isinstance(decoder, type) or decoder is None else type(decoder)
    if decoder_class is not None and decoder_class.answer_family is Decoder.answer_family:
        raise SettingError(f"decoder {decoder_class.__name__} works on SALMONN's audio tokens; with "
                           f"{family.family} use Generate, Contrastive, DiverseBeam or OptionScoring")
    diverse = getattr(decoder, "diverse_beam", None)
    if diverse is not None and diverse.query != "generated_mean":
        raise SettingError(f"decoder.query {diverse.query!r} needs the decoder's hidden states, which "
                           f"{family.family}'s generate does not give; use generated_mean")


def check_module_arguments(lora_scale: float = 1.0) -> None:
    """The numeric arguments of :class:`SalmonnModule` that no settings dataclass checks."""
    require(at_least(lora_scale, 0), "lora_scale", lora_scale, "a finite number >= 0")




def text_only(batch: dict) -> list[FamilyQuestion]:
    """Each row's question as a family asks it without the audio (the prior objectives' text-only pass)."""
    return [FamilyQuestion(text=text, clip=None) for text in shown_questions(batch)]


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
