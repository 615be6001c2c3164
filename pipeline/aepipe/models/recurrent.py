"""The recurrent family, for sequences: an RNN reads, another writes back."""

from __future__ import annotations

from torch import nn

from aepipe.models.base import Autoencoder, ModelConfig, register, widths


@register("recurrent")
class Recurrent(Autoencoder):
    """Sequences shaped (T, F) or (T,): an RNN reads the sequence to a code, another writes it back
    from the code repeated at every step."""

    default_hidden = (64,)
    options = ("cell",)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        shape = cfg.input_shape
        if len(shape) not in (1, 2):
            raise ValueError(f"recurrent needs sequences shaped (T,) or (T, F), got {shape}")
        self.t, self.f = shape[0], (shape[1] if len(shape) == 2 else 1)
        hidden = widths(cfg)
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.enc_rnn = rnn(self.f, max(hidden), num_layers=len(hidden), batch_first=True)
        self.to_code = nn.Linear(max(hidden), cfg.code_dim)
        self.dec_rnn = rnn(cfg.code_dim, max(hidden), num_layers=len(hidden), batch_first=True)
        self.out = nn.Linear(max(hidden), self.f)

    def own_code(self, x):  # (B, T, F) -> (B, code_dim)
        _, h = self.enc_rnn(x.reshape(-1, self.t, self.f))
        h = h[0] if isinstance(h, tuple) else h  # LSTM returns (h, c)
        return self.to_code(h[-1])

    def own_logits(self, z):
        y, _ = self.dec_rnn(z.unsqueeze(1).expand(-1, self.t, -1).contiguous())
        return self.out(y).view(-1, *self.cfg.input_shape)
