"""The arch contracts AllInOneModel relies on: task logits (:class:`TaskLogitsArch`) and a hook after each optimizer
step (:class:`AfterStepArch`). The checking of the archs' constructor options is ``utils.arch_options``."""


class TaskLogitsArch:
    """Contract of archs that vote for the degradation class (DaAIR, PromptDSANet). AllInOneModel calls
    ``forward(x, return_task_logits=True[, task_labels=labels])`` and gets ``(output, [logits (B, classes), ...])``
    for ``train.cls_opt``, the routing metrics and ``route_acc``; with ``task_labels`` (teacher forcing,
    ``train.teacher_forcing_iter``) the arch routes by the labels instead of its vote, or ignores them.
    ``has_task_logits`` may be set False per instance for a configuration without logits (DaAIR without specialised
    experts, PromptDSANet without a prompt net): such an arch says so before it is built, in
    ``missing_task_logits``."""
    has_task_logits = True

    @classmethod
    def missing_task_logits(cls, options):
        """Why a net built with ``options`` (``network_g`` without ``type``) gives no task logits, e.g.
        ``'without specialised_experts has no routers'``; None when it gives them."""
        return None


class AfterStepArch:
    """Contract of archs with state that follows the weights (DaAIR's EMA controllers): AllInOneModel calls
    ``after_optimizer_step()`` on the bare network after every optimizer step taken (not after a skipped one)."""

    def after_optimizer_step(self):
        raise NotImplementedError


def has_task_logits(net):
    """Whether ``net`` (a bare network) gives task logits: a :class:`TaskLogitsArch` configured with them."""
    return isinstance(net, TaskLogitsArch) and bool(net.has_task_logits)


def missing_task_logits(arch, options):
    """Why arch class ``arch`` built with ``options`` gives no task logits (None when it gives them): what the option
    checks and the recipe report say before anything is built, as ``has_task_logits`` says of a built net."""
    if isinstance(arch, type) and issubclass(arch, TaskLogitsArch):
        return arch.missing_task_logits(options)
    return 'has no task logits'
