"""Config keys of fiber-det: ``add_fiber_config(cfg)`` adds every key the FIBER model needs.

Keys are grouped by component. Defaults are the official FIBER-B fine-grained settings
(microsoft/FIBER ``fine_grained/configs``), so ``configs/Base-FIBER.yaml`` only has to set what
detectron2's own defaults get wrong for FIBER. Paper: Dou et al., "Coarse-to-Fine Vision-Language
Pre-training with Fusion in the Backbone", NeurIPS 2022 (arXiv 2206.07643).
"""

import os
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from . import model_zoo
from .data.datasets.custom import register_custom_datasets

__all__ = ["add_fiber_config", "load_config"]


def load_config(
    config_file: Optional[str],
    opts: Sequence = (),
    *,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    freeze: bool = True,
) -> CN:
    """The config of a run: detectron2's defaults, the FIBER keys, a yaml file, then overrides.

    The dataset of ``DATASETS.CUSTOM`` (your own json files) is registered here, the one place
    where a config becomes a run's config (:func:`fiber_det.data.register_custom_datasets`).

    Args:
        config_file: a yaml file, or a path relative to ``configs/`` of the shipped configs
            (:func:`fiber_det.model_zoo.get_config_file`), e.g. ``"fiber_b/eval/coco.yaml"``;
            empty or None: the defaults only.
        opts: ``KEY VALUE`` overrides, as on the command line.
        weights: overrides ``MODEL.WEIGHTS``; device: overrides ``MODEL.DEVICE``.
        freeze: return a frozen config.
    """
    cfg = add_fiber_config(get_cfg())
    if config_file:
        cfg.merge_from_file(_resolve_config_file(os.fspath(config_file)))
    cfg.merge_from_list(list(opts))
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    register_custom_datasets(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def _resolve_config_file(path: str) -> str:
    """A yaml file as given, else the shipped config of that relative path."""
    if os.path.isfile(path):
        return path
    try:
        return model_zoo.get_config_file(path)
    except (FileNotFoundError, ValueError) as e:
        raise FileNotFoundError(
            f"config file {path} not found (neither a file nor a shipped config: {e})"
        ) from e


def add_fiber_config(cfg: CN) -> CN:
    """Add the FIBER keys to a detectron2 config (in place) and return it."""
    _add_model_keys(cfg)
    _add_swin_keys(cfg)
    _add_language_keys(cfg)
    _add_fusion_keys(cfg)
    _add_head_keys(cfg)
    _add_data_keys(cfg)
    _add_coarse_data_keys(cfg)
    _add_solver_keys(cfg)
    _add_train_keys(cfg)
    _add_test_keys(cfg)
    _add_coarse_keys(cfg)
    return cfg


def _add_model_keys(cfg: CN) -> None:
    # detectron2 keys that FIBER sets in configs/Base-FIBER.yaml: MODEL.META_ARCHITECTURE
    # "FIBERDetector", MODEL.BACKBONE.NAME "build_fiber_backbone", MODEL.PIXEL_MEAN/PIXEL_STD
    # (official BGR statistics), INPUT.FORMAT "BGR", MODEL.FPN.IN_FEATURES ["res3", "res4",
    # "res5"] (Swin stages fed to the FPN; P6/P7 come from P5, RetinaNet style) and
    # MODEL.FPN.OUT_CHANNELS 256.
    # DropBlock on the FPN laterals in training (official MODEL.FPN.DROP_BLOCK, p=0.3, size 3).
    cfg.MODEL.FPN.DROP_BLOCK_PROB = 0.0
    cfg.MODEL.FPN.DROP_BLOCK_SIZE = 3
    # Weight files (MODEL.WEIGHTS, SWIN.WEIGHTS, LANGUAGE.WEIGHTS) are read as tensors only. True
    # also reads pickled Python objects (.pkl files, checkpoints with objects), which RUNS CODE
    # from the file: only for files you trust; better, convert them once to .pth / .safetensors.
    cfg.MODEL.WEIGHTS_ALLOW_PICKLE = False

    cfg.MODEL.FIBER = CN()
    # Legacy "+1" box conventions of maskrcnn_benchmark (box coder, anchors, ATSS IoU, NMS IoU,
    # clipping to W-1/H-1, xywh conversion of COCO results and of training boxes, flips). On in
    # every config that uses an official checkpoint; off gives the modern continuous convention.
    cfg.MODEL.FIBER.LEGACY_PLUS_ONE = True
    # Images in a batch are zero-padded to a multiple of this (after normalisation).
    cfg.MODEL.FIBER.SIZE_DIVISIBILITY = 32


def _add_swin_keys(cfg: CN) -> None:
    cfg.MODEL.SWIN = CN()
    # Swin-B of FIBER: embed 128, depths 2-2-18-2, heads 4-8-16-32, window 12.
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 128
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 18, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [4, 8, 16, 32]
    cfg.MODEL.SWIN.WINDOW_SIZE = 12
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    # Stochastic depth, linear from 0 to this over all blocks (official 0.4 for FIBER-B).
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.4
    # Absolute position embedding (off in FIBER); its size is set by the pre-training image size.
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 384
    # Official FREEZE_CONV_BODY_AT semantics: -1 nothing; 0 or 1 the patch embedding; k >= 2 the
    # patch embedding and stages 0..k-2. Pre-training and ODinW use 2, COCO/LVIS fine-tuning -1.
    cfg.MODEL.SWIN.FROZEN_STAGES = -1
    # Activation checkpointing of Swin blocks (saves memory in training, no effect in eval).
    cfg.MODEL.SWIN.USE_CHECKPOINT = False
    # Training memory: recompute in the backward pass, instead of keeping them, the normalised
    # tokens of both LayerNorms (and the window gather after norm1), the MLP's GELU and, on CPU,
    # the window attention (whose unfused SDPA path keeps every (nW, nH, N, N) attention
    # matrix). Same gradients, bit for bit; unlike USE_CHECKPOINT, no matmul of the linear
    # layers runs twice. No effect in evaluation. False keeps them (faster backward).
    cfg.MODEL.SWIN.RECOMPUTE_ACTIVATIONS = True
    # Path to ImageNet Swin weights (Microsoft or timm layout) loaded when MODEL.WEIGHTS is empty.
    cfg.MODEL.SWIN.WEIGHTS = ""


def _add_language_keys(cfg: CN) -> None:
    cfg.MODEL.LANGUAGE = CN()
    # RoBERTa architecture (transformers' RobertaConfig fields); roberta-base by default.
    cfg.MODEL.LANGUAGE.VOCAB_SIZE = 50265
    cfg.MODEL.LANGUAGE.HIDDEN_SIZE = 768
    cfg.MODEL.LANGUAGE.NUM_LAYERS = 12
    cfg.MODEL.LANGUAGE.NUM_HEADS = 12
    cfg.MODEL.LANGUAGE.INTERMEDIATE_SIZE = 3072
    cfg.MODEL.LANGUAGE.MAX_POSITION_EMBEDDINGS = 514
    cfg.MODEL.LANGUAGE.TYPE_VOCAB_SIZE = 1
    cfg.MODEL.LANGUAGE.LAYER_NORM_EPS = 1e-5
    cfg.MODEL.LANGUAGE.PAD_TOKEN_ID = 1
    cfg.MODEL.LANGUAGE.HIDDEN_DROPOUT = 0.1
    cfg.MODEL.LANGUAGE.ATTENTION_DROPOUT = 0.1
    # Tokenizer: a local folder or a Hugging Face id found in the local HF cache (never downloaded
    # at model build time). Used by the data mappers and the predictor, not by the model.
    cfg.MODEL.LANGUAGE.TOKENIZER = "roberta-base"
    # Path to roberta-base weights (folder with model.safetensors / pytorch_model.bin, or a file)
    # loaded into the text encoder when MODEL.WEIGHTS is empty.
    cfg.MODEL.LANGUAGE.WEIGHTS = ""
    # Token budget of a prompt (longer prompts are truncated with a warning).
    cfg.MODEL.LANGUAGE.MAX_QUERY_LEN = 256
    # Pad every prompt to MAX_QUERY_LEN tokens, as the official model does (PAD_MAX). False pads
    # only to the longest prompt of the batch: padded tokens are masked wherever they could
    # matter, so the detections are the same (tests/modeling/test_official_parity.py) and a
    # 12-token prompt does not pay for 256.
    cfg.MODEL.LANGUAGE.PAD_TO_MAX = False
    # Freeze the whole text encoder (its fusion layers included).
    cfg.MODEL.LANGUAGE.FREEZE = False
    # Activation checkpointing of RoBERTa layers (training memory only).
    cfg.MODEL.LANGUAGE.USE_CHECKPOINT = False


def _add_fusion_keys(cfg: CN) -> None:
    # Fusion in the backbone: the last NUM_FUSION_LAYERS Swin blocks get image-to-text
    # cross-attention, the last NUM_FUSION_LAYERS RoBERTa layers text-to-image cross-attention;
    # pair k (k-th fused block, k-th fused layer) is updated in parallel (FIBER Sec. 3.1).
    cfg.MODEL.FIBER.NUM_FUSION_LAYERS = 6
    # "v2": as fiber_coarse_then_fine.pth / fiber_coco.pth / fiber_lvis.pth;
    # "v3": v2 + LayerNorm on the image query of i2t (refexp and RefCOCO checkpoints).
    cfg.MODEL.FIBER.FUSION_VERSION = "v2"
    # Official: text attends to all image tokens, the zero padding (to SIZE_DIVISIBILITY) included.
    # True masks padded image tokens out of text-to-image attention (not official; changes numbers).
    cfg.MODEL.FIBER.MASK_IMAGE_PADDING = False
    # Prompt tuning (official "add_linear_layer"): a learned per-position offset (max 1000 tokens)
    # added to the text embeddings; initialised to zero.
    cfg.MODEL.FIBER.USE_PROMPT_TUNING = False
    # Images queried with several prompts (chunked vocabularies, D3 descriptions): run the
    # pre-fusion image part once per image and the pre-fusion text part once per distinct prompt
    # (cached across images), then the fused tail and head per batch of prompts. Same detections
    # as one full forward per prompt (False, the official protocol), fewer FLOPs.
    cfg.MODEL.FIBER.CACHED_MULTI_PROMPT = True
    # Prompts run together through the fused tail and head (memory grows linearly with it).
    cfg.MODEL.FIBER.PROMPT_BATCH_SIZE = 8
    # Pre-fusion text states kept across images (LRU); 0 disables the cache.
    cfg.MODEL.FIBER.TEXT_CACHE_SIZE = 128
    # torch.compile every Swin block, RoBERTa layer and the FPN (FIBERBackbone.compile_blocks) with
    # COMPILE_BACKEND ("inductor"; a C++ compiler on CPU, Triton on GPU). Compiles at the first
    # forward of each input size (minutes for FIBER-B); results equal eager to float rounding.
    cfg.MODEL.FIBER.COMPILE_BACKBONE = False
    cfg.MODEL.FIBER.COMPILE_BACKEND = "inductor"


def _add_head_keys(cfg: CN) -> None:
    cfg.MODEL.DYHEAD = CN()
    cfg.MODEL.DYHEAD.CHANNELS = 256
    # Number of DyHead blocks in the tower (official 6).
    cfg.MODEL.DYHEAD.NUM_CONVS = 6
    cfg.MODEL.DYHEAD.GN_GROUPS = 16
    cfg.MODEL.DYHEAD.USE_DYRELU = True
    cfg.MODEL.DYHEAD.USE_DFCONV = True
    # Scale-aware attention across levels (DyHead "pi_L").
    cfg.MODEL.DYHEAD.USE_DYFUSE = True
    # Official DCN quirk: the "next level" deformable conv reads the level-l offsets of the wrong
    # size as flat memory (CUDA kernel indexing). On for official checkpoints; off computes the
    # offsets at the right size (upsampled) for models trained from scratch.
    cfg.MODEL.DYHEAD.EMULATE_DCN_OFFSET_QUIRK = True
    # Prior probability of the region-word bias bias0 = -log((1 - p) / p).
    cfg.MODEL.DYHEAD.PRIOR_PROB = 0.01
    # Initial log temperature of the region-word logits (logits / exp(log_scale)).
    cfg.MODEL.DYHEAD.LOG_SCALE = 0.0
    # Activation checkpointing of the DyHead tower (training memory only).
    cfg.MODEL.DYHEAD.USE_CHECKPOINT = False
    # Deformable conv implementation: "torchvision" (torchvision.ops.deform_conv2d),
    # "grid_sample" (same maths as grid_sample + matmul, faster on CPU), "auto" (grid_sample on
    # CPU, torchvision on CUDA). They agree to ~1e-5.
    cfg.MODEL.DYHEAD.DCN_IMPL = "auto"
    # grid_sample DCN in training: keep only its inputs and recompute the sampled (9C, HW)
    # columns in the backward pass (same gradients, a fraction of the memory); False keeps them.
    cfg.MODEL.DYHEAD.DCN_RECOMPUTE = True

    cfg.MODEL.ATSS = CN()
    # Anchors: one per location, size = ANCHOR_SIZES[l] at stride ANCHOR_STRIDES[l] (P3-P7).
    cfg.MODEL.ATSS.ANCHOR_SIZES = [64, 128, 256, 512, 1024]
    cfg.MODEL.ATSS.ANCHOR_STRIDES = [8, 16, 32, 64, 128]
    # ATSS: candidates per level (top-k closest anchor centres), IoU threshold = mean + std.
    cfg.MODEL.ATSS.TOPK = 9
    cfg.MODEL.ATSS.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
    cfg.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0
    cfg.MODEL.ATSS.CENTERNESS_LOSS_WEIGHT = 1.0
    cfg.MODEL.ATSS.TOKEN_LOSS_WEIGHT = 1.0
    # Token-level sigmoid focal loss (alpha, gamma).
    cfg.MODEL.ATSS.FOCAL_ALPHA = 0.25
    cfg.MODEL.ATSS.FOCAL_GAMMA = 2.0
    # Inference: a candidate needs mean token probability > INFERENCE_TH (before centerness).
    cfg.MODEL.ATSS.INFERENCE_TH = 0.05
    cfg.MODEL.ATSS.PRE_NMS_TOP_N = 1000
    cfg.MODEL.ATSS.NMS_TH = 0.6
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 100


def _add_data_keys(cfg: CN) -> None:
    cfg.DATASETS.FIBER = CN()
    # Separator between category names in a detection prompt (official ". ").
    cfg.DATASETS.FIBER.SEPARATION_TOKENS = ". "
    # Detection training prompts (official od-to-grounding, fiber_det.text.od_to_grounding):
    # "full" writes every category (COCO, ODinW, small vocabularies); "sampled" writes the
    # image's categories plus sampled negatives (LVIS, Objects365). "" uses each dataset's
    # `train_prompt` metadata (set by register_detection_dataset; builtin LVIS/O365: "sampled").
    cfg.DATASETS.FIBER.TRAIN_PROMPT = ""
    # "full" prompts: a new random category order per image (official; off = id order).
    cfg.DATASETS.FIBER.SHUFFLE_CATEGORIES = True
    # "sampled" prompts: at most this many negative categories per caption (official 85).
    cfg.DATASETS.FIBER.RANDOM_SAMPLE_NEG = 85
    # "sampled" prompts: official CONTROL_PROB (p one negative, p one positive, p all sampled
    # negatives, p drop positives [ignored: positives are always kept]); else 1..N negatives.
    cfg.DATASETS.FIBER.CONTROL_PROB = [0.0, 0.0, 1.0, 0.0]
    # Token budget of a "sampled" training caption, without <s> and </s> (official 254); capped
    # at MODEL.LANGUAGE.MAX_QUERY_LEN - 2. Boxes whose names do not fit are dropped and counted.
    cfg.DATASETS.FIBER.MAX_CAPTION_TOKENS = 254
    # Horizontal flip probability in training (official 0.5; 0 for RefCOCO).
    cfg.DATASETS.FIBER.FLIP_PROB = 0.5
    # Swap "left"/"right" in the caption when flipping (MDETR); off in the official recipes.
    cfg.DATASETS.FIBER.FLIP_SWAP_LEFT_RIGHT = False


def _add_coarse_data_keys(cfg: CN) -> None:
    # Image-text pairs of stage 1 (coarse-grained pre-training and retrieval; official values of
    # coarse_grained/fiber/config.py). See fiber_det/data/pair_mapper.py.
    cfg.INPUT.COARSE = CN()
    # Side S of the square model input (official 384 for pre-training and ITM retrieval, 576
    # for ITC retrieval fine-tuning).
    cfg.INPUT.COARSE.IMAGE_SIZE = 384
    # Caption length L in tokens, <s> and </s> included; longer captions are truncated and
    # counted (official 40 in pre-training, 50 in fine-tuning).
    cfg.INPUT.COARSE.MAX_TEXT_LEN = 40
    # Share of the caption tokens chosen for MLM (80% <mask>, 10% random, 10% kept; official 0.15).
    cfg.INPUT.COARSE.MLM_PROB = 0.15
    # Training image transform: "albef" (resize only; the official pre-training) or
    # "albef_randaug" (crop, flip, RandAugment; the official fine-tuning).
    cfg.INPUT.COARSE.TRAIN_TRANSFORM = "albef"
    # Evaluation image transform (official "albef").
    cfg.INPUT.COARSE.TEST_TRANSFORM = "albef"
    cfg.DATASETS.COARSE = CN()
    # Training visits of an image per epoch: "caption" (once per caption, as the official
    # datasets enumerate image-caption pairs; weights the sources like the official mix) or
    # "image" (once). Used as RepeatFactorTrainingSampler factors (pair_repeat_factors).
    cfg.DATASETS.COARSE.SAMPLE_BY = "caption"
    # Image-text pair files of your own (JSON lines {"image": path, "captions": [...]}, or Arrow),
    # registered by load_config as "custom_pairs_train" / "custom_pairs_test" (retrieval).
    cfg.DATASETS.COARSE.CUSTOM_TRAIN = []
    cfg.DATASETS.COARSE.CUSTOM_TEST = []
    cfg.TEST.COARSE = CN()
    # Images per batch in retrieval evaluation (fiber_det.evaluation.RetrievalEvaluator; the
    # scores do not depend on it).
    cfg.TEST.COARSE.IMS_PER_BATCH = 32


def _add_solver_keys(cfg: CN) -> None:
    # detectron2 keys the FIBER recipes set: SOLVER.BASE_LR / WEIGHT_DECAY / BIAS_LR_FACTOR (2,
    # official) / WEIGHT_DECAY_BIAS (0) / GAMMA / WARMUP_* / CLIP_GRADIENTS (CLIP_TYPE
    # "full_model": one norm over every trained parameter, FIBER pre-training) / AMP.ENABLED
    # (GPU only) / CHECKPOINT_PERIOD / IMS_PER_BATCH, TEST.EVAL_PERIOD, SEED. SOLVER.STEPS
    # entries < 1 are fractions of MAX_ITER (official: (0.67, 0.89)).
    cfg.SOLVER.FIBER = CN()
    # Learning rate of every parameter under the text encoder (its fusion layers included).
    cfg.SOLVER.FIBER.LANG_LR = 1e-5
    # "ADAMW" (every FIBER recipe) or "SGD" (momentum SOLVER.MOMENTUM).
    cfg.SOLVER.FIBER.OPTIMIZER = "ADAMW"
    # Parameter groups. "official" (solver/build.py of microsoft/FIBER): names containing "bias"
    # (relative_position_bias_table, bias_lang, bias0 included) get BIAS_LR_FACTOR x LR and
    # WEIGHT_DECAY_BIAS; norms keep WEIGHT_DECAY x WEIGHT_DECAY_NORM_FACTOR; the rest
    # WEIGHT_DECAY. "no_decay_norm_embed" (not official): additionally no weight decay on norms,
    # embeddings, gates, position-bias tables and scales, and no LR factor on biases.
    # "official_coarse" (the coarse-grained model, FIBERCoarse): see LR_MULT_HEAD below.
    cfg.SOLVER.FIBER.PARAM_GROUPS = "official"
    # LR multiplier of the Swin body (official BACKBONE_BODY_LR_FACTOR).
    cfg.SOLVER.FIBER.BACKBONE_BODY_LR_FACTOR = 1.0
    # Weight-decay multiplier of norm parameters in the official naming ("norm"/"Norm"; the
    # head's GroupNorms, officially "bn", are not norms for this rule).
    cfg.SOLVER.FIBER.WEIGHT_DECAY_NORM_FACTOR = 1.0
    # Weight decay x GAMMA whenever the iteration reaches RATIO x an LR milestone (official
    # WEIGHT_DECAY_SCHEDULE of the pre-training recipe; multi-step schedules only).
    cfg.SOLVER.FIBER.WEIGHT_DECAY_SCHEDULE = False
    cfg.SOLVER.FIBER.WEIGHT_DECAY_SCHEDULE_RATIO = 0.667
    # > 0: train this many epochs, MAX_ITER = MAX_EPOCH x |training set| // IMS_PER_BATCH
    # (|training set| counts the copies, as the official MAX_EPOCH).
    cfg.SOLVER.FIBER.MAX_EPOCH = 0
    # > 0: SOLVER.CHECKPOINT_PERIOD / TEST.EVAL_PERIOD in epochs instead of iterations.
    cfg.SOLVER.FIBER.CHECKPOINT_PER_EPOCH = -1.0
    cfg.SOLVER.FIBER.EVAL_PER_EPOCH = -1.0
    # Official USE_AUTOSTEP (ODinW): after warm-up, LR x GAMMA when the validation metric has not
    # improved for STEP_PATIENCE evaluations (ReduceLROnPlateau, mode max), never below MIN_LR.
    cfg.SOLVER.FIBER.USE_AUTOSTEP = False
    cfg.SOLVER.FIBER.STEP_PATIENCE = 5
    cfg.SOLVER.FIBER.MIN_LR = 1e-6
    # Metric driving the plateau schedule, early termination and model_best (flattened results
    # key, e.g. "bbox/AP"; with several test sets, of the first one).
    cfg.SOLVER.FIBER.MONITOR_METRIC = "bbox/AP"
    # > 0: stop when the metric has not improved for this many evaluations (official
    # AUTO_TERMINATE_PATIENCE; ODinW: 8); the best model is saved as model_best.pth.
    cfg.SOLVER.FIBER.AUTO_TERMINATE_PATIENCE = -1
    # Model EMA decay (official MODEL_EMA; 0.999 in pre-training and COCO/LVIS/RefCOCO, 0 = off).
    # The average (every floating-point state_dict entry) is saved as "model_ema".
    cfg.SOLVER.FIBER.MODEL_EMA = 0.0
    # Evaluate with the EMA weights (training evaluations and --eval-only; official
    # USE_EMA_FOR_MONITOR).
    cfg.SOLVER.FIBER.USE_EMA_FOR_EVAL = False
    # A batch whose images without boxes exceed this fraction (or are all of it) is replaced by
    # the next batch (official MAX_NEG_PER_BATCH 0.1 skips it); >= 1 keeps every batch.
    cfg.SOLVER.FIBER.MAX_NEG_PER_BATCH = 0.1
    # Reseed the RNGs at every iteration from (SEED, iteration, rank) and every image from
    # (SEED, its position in the sample stream), so that --resume continues exactly (SEED >= 0).
    cfg.SOLVER.FIBER.SEED_PER_ITERATION = True
    # Iterations between two log lines / metrics.json records.
    cfg.SOLVER.FIBER.LOG_PERIOD = 20
    # DistributedDataParallel(find_unused_parameters=...) (official FIND_UNUSED_PARAMETERS).
    cfg.SOLVER.FIBER.FIND_UNUSED_PARAMETERS = False
    # AdamW's betas and epsilon (torch's defaults; the coarse-grained recipes: (0.9, 0.98), 1e-8).
    cfg.SOLVER.FIBER.ADAMW_BETAS = (0.9, 0.999)
    cfg.SOLVER.FIBER.ADAMW_EPS = 1e-8
    # PARAM_GROUPS "official_coarse" (the coarse-grained model's set_schedule): LR multipliers of
    # the task heads (mlm_score, itm_score) and of the cross-modal parameters (names containing
    # cross_modal, i2t, t2i); official lr_mult_head 5, lr_mult_cross_modal 5.
    cfg.SOLVER.FIBER.LR_MULT_HEAD = 1.0
    cfg.SOLVER.FIBER.LR_MULT_CROSS_MODAL = 1.0
    # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR" (coarse-grained recipes, transformers'
    # get_polynomial_decay_schedule_with_warmup): after the warm-up the LR falls as
    # (1 - progress) ** POLY_POWER from BASE_LR to POLY_END_LR (official decay_power 1, end_lr 0).
    cfg.SOLVER.FIBER.POLY_POWER = 1.0
    cfg.SOLVER.FIBER.POLY_END_LR = 0.0
    # > 0: SOLVER.WARMUP_ITERS = int(WARMUP_FRACTION x MAX_ITER) (official warmup_steps 0.1).
    cfg.SOLVER.FIBER.WARMUP_FRACTION = 0.0
    # > 0: images per process and forward pass; SOLVER.IMS_PER_BATCH (the batch of one optimizer
    # step) is then reached by accumulating IMS_PER_BATCH / (IMS_PER_DEVICE x processes) forward
    # passes (official accumulate_grad_batches = batch_size // (per_gpu_batchsize x GPUs); here it
    # must divide exactly). 0: one forward pass of IMS_PER_BATCH / processes images per step.
    cfg.SOLVER.FIBER.IMS_PER_DEVICE = 0


def _add_train_keys(cfg: CN) -> None:
    # Training-time freezes (fiber_det.engine.freeze). Frozen modules also stay in eval mode.
    # The whole Swin, its image-to-text fusion included (official MODEL.BACKBONE.FREEZE).
    cfg.MODEL.SWIN.FREEZE = False
    # The FPN (official MODEL.FPN.FREEZE) and the DyHead head (official MODEL.RPN.FREEZE).
    cfg.MODEL.FPN.FREEZE = False
    cfg.MODEL.DYHEAD.FREEZE = False
    # Official linear probe (MODEL.LINEAR_PROB): only the final prediction layers train
    # (head.bbox_pred, head.centerness, head.text_proj, head.log_scale, head.bias_lang,
    # head.bias0). MODEL.FIBER.USE_PROMPT_TUNING on its own trains only the prompt offsets
    # (GLIP "language_prompt_v2"); with LINEAR_PROBE both (GLIP "language_prompt_v4").
    cfg.MODEL.FIBER.LINEAR_PROBE = False

    # The training stream (fiber_det/data/samplers.py): "MixedTrainingSampler" (the official random
    # order over the concatenated DATASETS.TRAIN, with the COPIES / SAMPLING_RATIOS below),
    # detectron2's "TrainingSampler", or "RepeatFactorTrainingSampler" (LVIS-style repeat factors,
    # DATALOADER.REPEAT_THRESHOLD). All are resumable and seed each image by its stream position.
    cfg.DATALOADER.SAMPLER_TRAIN = "MixedTrainingSampler"
    cfg.DATALOADER.FIBER = CN()
    # Whole-number copies of each DATASETS.TRAIN entry in the concatenated training set
    # (official *_COPY / GENERAL_COPY); [] = 1 each.
    cfg.DATALOADER.FIBER.COPIES = []
    # Not official: draw each image's dataset with these probabilities (one per DATASETS.TRAIN
    # entry) instead of concatenating; [] = concatenation.
    cfg.DATALOADER.FIBER.SAMPLING_RATIOS = []
    # > 0: keep only enough images for this many boxes-containing images per category (official
    # FEW_SHOT, ODinW 1/3/5/10-shot), after a shuffle with FEW_SHOT_SEED (0 = file order).
    cfg.DATALOADER.FIBER.FEW_SHOT = 0
    cfg.DATALOADER.FIBER.FEW_SHOT_SEED = 0

    # A dataset of your own, registered as "custom_train" / "custom_val" when the config is loaded
    # (fiber_det.config.load_config; configs/fiber_b/custom_finetune.yaml): COCO-format detection
    # json or MDETR-format grounding json ("grounding").
    cfg.DATASETS.CUSTOM = CN()
    cfg.DATASETS.CUSTOM.FORMAT = "detection"
    cfg.DATASETS.CUSTOM.TRAIN_JSON = ""
    cfg.DATASETS.CUSTOM.TRAIN_IMAGES = ""
    cfg.DATASETS.CUSTOM.VAL_JSON = ""
    cfg.DATASETS.CUSTOM.VAL_IMAGES = ""
    # Evaluator of custom_val ("coco" box AP for detection, "grounding" recall for grounding).
    cfg.DATASETS.CUSTOM.EVALUATOR_TYPE = "coco"
    # Detection training prompts: "full" (every category) or "sampled" (large vocabularies).
    cfg.DATASETS.CUSTOM.TRAIN_PROMPT = "full"


def _add_test_keys(cfg: CN) -> None:
    cfg.TEST.FIBER = CN()
    # Categories per prompt for large vocabularies (official LVIS: 40, i.e. 31 prompts); <= 0
    # packs consecutive names greedily up to the token budget (one prompt when all fit), as
    # fiber_det.text.chunk_names does. The outputs of all prompts of an image are merged.
    cfg.TEST.FIBER.CHUNK_SIZE = -1
    # LVIS: Fixed AP (Dave et al. 2021; official FIBER protocol): the top LVIS_FIXED_AP_TOPK
    # detections of each category over the whole dataset, no per-image cap. False: standard LVIS
    # AP, the top LVIS_MAX_DETS_PER_IMAGE detections of each image (chunks merged).
    cfg.TEST.FIBER.LVIS_USE_FIXED_AP = True
    cfg.TEST.FIBER.LVIS_FIXED_AP_TOPK = 10000
    cfg.TEST.FIBER.LVIS_MAX_DETS_PER_IMAGE = 300
    # Flickr30k Entities: "any" (a hit is IoU >= threshold with any GT box of the phrase; MDETR's
    # and FIBER's reported protocol) or "merged" (with the box enclosing the phrase's GT boxes).
    cfg.TEST.FIBER.FLICKR_PROTOCOL = "any"
    # Recall@k levels of phrase grounding (Flickr and "grounding" datasets); -1 is the upper bound.
    cfg.TEST.FIBER.FLICKR_TOPK = [1, 5, 10, -1]
    # Precision@k levels of RefCOCO/+/g (reported with GIoU, official, and with IoU).
    cfg.TEST.FIBER.REFEXP_TOPK = [1, 5, 10]
    # (G)IoU of a hit for Flickr30k, RefCOCO and phrase-grounding recall.
    cfg.TEST.FIBER.GROUNDING_IOU_THRESHOLD = 0.5
    # COCO-O effective robustness needs the clean COCO val AP (points) of the same model and
    # prompt; < 0 takes it from a "coco" dataset evaluated in the same run (DATASETS.TEST).
    cfg.TEST.FIBER.COCO_O_CLEAN_AP = -1.0
    # Grounding datasets (Flickr30k, RefCOCO/+/g, ...): the captions or expressions of one image
    # form one model input with ``prompts`` (pre-fusion image part once, captions batched through
    # the fused tail), split back into one record per caption: the same records as one forward per
    # caption (False, the official protocol), less work.
    cfg.TEST.FIBER.GROUP_BY_IMAGE = True
    # Images per evaluation forward, batched only with images of the same padded size (same
    # results as one by one). 0: auto, 1 on CPU (no gain) and 8 on GPU; 1: one image per forward.
    cfg.TEST.FIBER.SIZE_BUCKET_BATCH = 0


def _add_coarse_keys(cfg: CN) -> None:
    # The coarse-grained model (stage 1, MODEL.META_ARCHITECTURE "FIBERCoarse"; official
    # microsoft/FIBER coarse_grained, configs/fiber_b/coarse/). Its backbone is the one above:
    # MODEL.SWIN, MODEL.LANGUAGE and MODEL.FIBER.NUM_FUSION_LAYERS / FUSION_VERSION ("v3": the
    # coarse Swin has the i2t query LayerNorm); MODEL.SWIN.WINDOW_SIZE must be
    # INPUT.COARSE.IMAGE_SIZE / 32 (the window covers the last stage, official).
    cfg.MODEL.COARSE = CN()
    # Width of the cross-modal transforms, poolers, ITC embeddings and MLM head (official
    # hidden_size 768); ITM classifies [text, image] pooled features of twice this width.
    cfg.MODEL.COARSE.HIDDEN_SIZE = 768
    # Loss weights (official: 1 each, summed). 0 turns a loss off and does not build its head
    # (ITC off also drops the temperature and the queue), as the official loss_names switches.
    cfg.MODEL.COARSE.ITC_LOSS_WEIGHT = 1.0
    cfg.MODEL.COARSE.ITM_LOSS_WEIGHT = 1.0
    cfg.MODEL.COARSE.MLM_LOSS_WEIGHT = 1.0
    # Initial ITC temperature tau (similarities / tau); clamped to [0.001, 1] at every step.
    cfg.MODEL.COARSE.TEMPERATURE = 0.07
    # ITC queue entries (ALBEF memory queue; official 4096). Must hold the batch of all processes.
    cfg.MODEL.COARSE.QUEUE_SIZE = 4096
    # Keep the raw inputs (image, ids, mask) of every queue entry, so that ITM hard negatives are
    # drawn from the batch and the queue (official). Memory per process, growing with the entries
    # written and saved in checkpoints: up to QUEUE_SIZE x 3 x IMAGE_SIZE^2 x 4 bytes, 7.25 GB for
    # FIBER-B (4096 x 3 x 384 x 384). False: negatives from the batch only, no raw-input queue.
    cfg.MODEL.COARSE.HARD_NEGATIVES_FROM_QUEUE = True
    # The queue starts as torch.randn embeddings, not normalised (official, "faithful"); True
    # L2-normalises them as ALBEF does (the first steps then see unit-norm negatives).
    cfg.MODEL.COARSE.NORMALIZE_QUEUE_INIT = False
    # Not official: ITC keys and hard-negative candidates from the batch of every process (so
    # that N processes equal one process with the whole batch). Official: each process uses its
    # own batch plus the shared (all-gathered) queue.
    cfg.MODEL.COARSE.GATHER_BATCH = False
    # Retrieval scoring (fiber_det.modeling.coarse.retrieval): ITM scores only for the ITC top-k
    # candidates of each image and each text (ALBEF: 128 on Flickr30k, 256 on COCO); 0 scores
    # every pair with ITM (official).
    cfg.MODEL.COARSE.RERANK_TOPK = 0
    # Image-text pairs run together through the fused tail when scoring retrieval with ITM.
    cfg.MODEL.COARSE.ITM_BATCH_SIZE = 64
