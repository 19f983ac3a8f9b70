"""One optimisation step of LDM's autoencoder: the autoencoder, then the discriminator.

What a training loop calls per batch (taming/LDM alternate the two optimisers every step);
plain tensors and modules in, a dict of detached logs out.
"""

from __future__ import annotations

import torch


def autoencoder_step(autoencoder, loss_fn, x: torch.Tensor, step: int, *, opt_ae, opt_disc=None,
                     generator=None, last_layer=None) -> dict:
    """Update the autoencoder (and `loss_fn.logvar`) on `loss_fn.generator_loss`, then, from
    `loss_fn.disc_start` on, the discriminator on its hinge loss; returns the logs.

    `last_layer` (default `autoencoder.last_layer`) is the weight of LDM's adaptive weight; pass
    it when `autoencoder` is wrapped (DDP), which hides the attribute."""
    x_rec, posterior = autoencoder(x, sample_posterior=True, generator=generator)
    last_layer = autoencoder.last_layer if last_layer is None else last_layer
    loss, logs = loss_fn.generator_loss(x, x_rec, posterior, step, last_layer=last_layer)
    opt_ae.zero_grad(set_to_none=True)
    loss.backward()
    opt_ae.step()
    if opt_disc is not None and loss_fn.adversarial(step) > 0:
        d_loss, d_logs = loss_fn.discriminator_loss(x, x_rec, step)
        opt_disc.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_disc.step()
        logs.update(d_logs)
    return {"loss": loss.detach(), **logs}


def ae_parameters(autoencoder, loss_fn):
    """What the autoencoder's optimiser trains: the network and the learned log-variance."""
    return [*autoencoder.parameters(), loss_fn.logvar]
