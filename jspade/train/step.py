"""One training iteration's arithmetic, as the original's Pix2PixTrainer does it: a generator step,
then a discriminator step on a fresh fake, each with Adam; TTUR (G at half the phase's lr, D at twice,
betas (0, 0.9)) unless train.no_ttur. The trainer and scripts/benchmark.py both train through
`train_step`, so what the benchmark times is what training runs. Also what the step computes with:
the perceptual loss's VGG19 weights, mixed precision."""
from jspade.checkpoint import original_layout
from jspade.models.base import trainable_parameters
from jspade.runtime import jt
from jspade.train.optim import Adam


def build_optimizers(model, t):
    """(Adam for G and E, Adam for D) for `t` (the train config); the lr is set per epoch (`set_lr`)."""
    betas = (t.beta1, t.beta2) if t.no_ttur else (0.0, 0.9)
    g_nets = [model.netG] + ([model.netE] if model.netE is not None else [])
    return adam_for(g_nets, betas), adam_for([model.netD], betas)


def adam_for(networks, betas):
    """Adam over the trainable parameters of `networks`, its checkpoint state in the original's layout."""
    params = [p for net in networks for p in trainable_parameters(net)]
    index = {id(p): i for i, p in enumerate(params)}
    layout = []
    for net in networks:
        state = net.state_dict()
        layout += [(index[id(state[key])], part, parts) for _, key, part, parts in original_layout(net)
                   if id(state[key]) in index]
    return Adam(params, lr=0.0, betas=betas, layout=layout)


def set_lr(optimizer_G, optimizer_D, lr, no_ttur=False):
    optimizer_G.lr, optimizer_D.lr = (lr, lr) if no_ttur else (lr / 2, lr * 2)


def train_step(model, optimizer_G, optimizer_D, sem, real, clip=None, reuse_fake=False):
    """One generator step, then one discriminator step on a fresh fake (on the generator step's with
    `reuse_fake`). Returns float losses. `clip`: the batch's CLIP embeddings (a CLIP model)."""
    g_losses, fake, _ = model.generator_losses(sem, real, clip=clip)
    optimizer_G.step(sum(g_losses.values()), fetch=list(g_losses.values()) + [fake] * reuse_fake)
    d_losses = model.discriminator_losses(sem, real, fake=fake if reuse_fake else None, clip=clip)
    optimizer_D.step(sum(d_losses.values()), fetch=list(d_losses.values()))
    return {k: float(v.item()) for k, v in {**g_losses, **d_losses}.items()}


def load_vgg(model, path, log=print):
    """Load the VGG19 of the perceptual loss from `path`. Returns True when loaded, False (said
    loudly) when the loss will use random features, None for a model without the VGG loss."""
    if model.vgg is None:
        return None
    if path:
        model.vgg.load_weights(path)
        log(f"VGG19 weights loaded from {path}")
        return True
    log("\n" + "!" * 78 + "\n!! WARNING: training WITHOUT pretrained VGG19 weights: the perceptual loss uses\n"
        "!! RANDOM VGG features. Pass --train.vgg_weights PATH (torchvision vgg19-*.pth or Jittor\n"
        "!! vgg19.pkl) for real training, or --model.no_vgg_loss true to drop the term.\n" + "!" * 78)
    return False


def set_mixed_precision(amp, log=print):
    """train.amp: Jittor's automatic mixed precision (fp16 where safe, fp32 for reductions/exp), CUDA only."""
    if amp and jt.flags.use_cuda:
        jt.flags.auto_mixed_precision_level = 4
        log("mixed precision on (Jittor auto_mixed_precision_level=4)")
    elif amp:
        log("--train.amp ignored: mixed precision needs a CUDA device")
