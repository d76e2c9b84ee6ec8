# MindBridge's parse-time settings and helpers (no package import).

MB = config.get("mindbridge", {})
MB_TARGET = MB.get("target", SUBJECTS[-1])
MB_SOURCES = [s for s in SUBJECTS if s != MB_TARGET]
MB_PERCENT = [f"{p:g}" for p in MB.get("percent", [6, 18, 47])]
MB_ADAPT = ["reset", "scratch", *(["finetune"] if MB.get("finetune", True) else [])]
MB_TEXT = f"results/features/clip_text/{slug(config['models']['clip']['name'])}.h5"


def mb_same_model(a, b):
    keys = ("name", "source", "pretrained", "extra")
    return all(a.get(k) == b.get(k) for k in keys)


# Image targets: the CLIP model's pooled image embeddings. When the backbone role is the same model, its feature
# file (which the encoders already need) holds them, and the clip role's file is not computed a second time.
MB_IMAGE = FEATURES["backbone"] if mb_same_model(config["models"]["clip"], config["models"]["backbone"]) else FEATURES["clip"]


def mb_settings(limited):
    """The model and train sections for the command; limited-data runs take `adapt` over `train`."""
    train = {**MB.get("train", {}), **(MB.get("adapt", {}) if limited else {})}
    settings = {"model": MB.get("model", {}), "train": train, "image_tokens": MB.get("image_tokens", False)}
    return json.dumps(settings, sort_keys=True)


def mb_responses(subjects):
    return " ".join(f"{s}=results/prep/{s}/responses.h5" for s in subjects)


def mb_runs():
    return [
        *expand("results/mindbridge/single/{subject}", subject=SUBJECTS),
        "results/mindbridge/bridge",
        *expand("results/mindbridge/{mode}/{target}/p{pct}", mode=MB_ADAPT, target=MB_TARGET, pct=MB_PERCENT),
    ]


MB_RECON = MB.get("recon", {})
# Galleries: the cross-subject model on each source subject, reset-tuning on the target at the most data.
MB_GALLERIES = [
    *(f"results/galleries/mindbridge/bridge/{s}" for s in MB_SOURCES),
    f"results/galleries/mindbridge/reset-p{MB_PERCENT[-1]}/{MB_TARGET}",
]


def mb_gallery_run(wildcards):
    if wildcards.run == "bridge":
        return "results/mindbridge/bridge"
    mode, pct = wildcards.run.split("-p")
    return f"results/mindbridge/{mode}/{wildcards.subject}/p{pct}"
