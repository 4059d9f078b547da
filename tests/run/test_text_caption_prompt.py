"""What SALMONN reads under the text_caption variant: the caption where the audio tokens were, no audio."""

from pathlib import Path

import torch

from salmonn_pl.data.datamodule import SakuraDataModule
from salmonn_pl.data.variants import Variant
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.model.llm import embed_tokens

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo-sakura"


def test_salmonn_reads_the_caption_inside_the_speech_tags_and_hears_nothing(tiny_config, tiny_salmonn):
    dm = SakuraDataModule(DEMO, tracks=["Synthetic"], hops=["single"], limit=1,
                          variants=[Variant(), Variant(text_caption=True)],
                          caption_templates={"Synthetic": "The sound is a {label}."})
    batch = next(iter(dm.test_dataloader()))
    assert batch["meta"][1]["caption"] == "The sound is a falling chirp."
    module = SalmonnModule(tiny_config)
    module.salmonn = tiny_salmonn
    module.eval()
    with torch.no_grad():
        inputs = tiny_salmonn.assemble(batch["prompt"], module.encode(batch))
        question = batch["meta"][1]["question"]
        tokenizer = tiny_salmonn.tokenizer
        # As the official code tokenizes a prompt: the text before and after the audio, each on its own.
        expected = [tokenizer.bos_token_id, *tokenizer.encode("USER: <Speech>The sound is a falling chirp."),
                    *tokenizer.encode(f"</Speech> {question}\nASSISTANT:")]
        caption_row = inputs.inputs_embeds[1][inputs.attention_mask[1].bool()]
        torch.testing.assert_close(caption_row, embed_tokens(tiny_salmonn.llm)(torch.tensor(expected)), rtol=0, atol=0)
    assert not inputs.audio_mask[1].any()  # no_audio: the caption row holds no audio token
    assert inputs.audio_mask[0].sum() > 0  # the audio row of the same clip does
