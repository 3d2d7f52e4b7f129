"""Original checkpoints -> dsunet-hf artifacts (each module documents its key map)."""

from __future__ import annotations


def save_converted_model(model, converted: dict, source, output_dir, include_backbone: bool = False,
                         processor=None):
    """Load a converted state dict strictly (every tensor of the model, nothing else), then write the
    artifact (trainable-only unless ``include_backbone``), its image processor (the model's default unless
    given) and its card."""
    own = model.state_dict()
    resized = [f"{key} {tuple(tensor.shape)} (the model's {tuple(own[key].shape)})" for key, tensor in converted.items()
               if key in own and own[key].shape != tensor.shape]
    if resized:
        raise ValueError(f"{source}: does not fit {type(model).__name__} with this config; tensors of another size: "
                         f"{', '.join(resized[:3])}{' ...' if len(resized) > 3 else ''}")
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source}: does not fit {type(model).__name__} with this config; missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    model.eval()
    model.save_pretrained(output_dir, include_backbone=include_backbone)
    (processor or model.default_image_processor()).save_pretrained(output_dir)
    return model
