"""Config keys of fiber-det: ``add_fiber_config(cfg)`` adds every key the FIBER model needs.

Keys are grouped by component. Defaults are the official FIBER-B fine-grained settings
(microsoft/FIBER ``fine_grained/configs``), so ``configs/Base-FIBER.yaml`` only has to set what
detectron2's own defaults get wrong for FIBER. Paper: Dou et al., "Coarse-to-Fine Vision-Language
Pre-training with Fusion in the Backbone", NeurIPS 2022 (arXiv 2206.07643).
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_fiber_config"]


def add_fiber_config(cfg: CN) -> CN:
    """Add the FIBER keys to a detectron2 config (in place) and return it."""
    _add_model_keys(cfg)
    _add_swin_keys(cfg)
    _add_language_keys(cfg)
    _add_fusion_keys(cfg)
    _add_head_keys(cfg)
    _add_data_keys(cfg)
    _add_solver_keys(cfg)
    _add_test_keys(cfg)
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
    # Token budget of a prompt. The official model always pads to 256 tokens (PAD_MAX).
    cfg.MODEL.LANGUAGE.MAX_QUERY_LEN = 256
    cfg.MODEL.LANGUAGE.PAD_TO_MAX = True
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
    # Detection training prompts (official od-to-grounding): shuffle the category list.
    cfg.DATASETS.FIBER.SHUFFLE_CATEGORIES = True
    # LVIS / Objects365 style prompts: keep all positives and sample up to this many negatives
    # (-1: write the full category list, as COCO and ODinW fine-tuning do).
    cfg.DATASETS.FIBER.RANDOM_SAMPLE_NEG = -1
    # Token budget of a training caption (the official value leaves room for <s> and </s>).
    cfg.DATASETS.FIBER.MAX_CAPTION_TOKENS = 254
    # Horizontal flip probability in training (official 0.5; 0 for RefCOCO).
    cfg.DATASETS.FIBER.FLIP_PROB = 0.5
    # Swap "left"/"right" in the caption when flipping (MDETR); off in the official recipes.
    cfg.DATASETS.FIBER.FLIP_SWAP_LEFT_RIGHT = False


def _add_solver_keys(cfg: CN) -> None:
    cfg.SOLVER.FIBER = CN()
    # Learning rate of every parameter under the text encoder (its fusion layers included).
    cfg.SOLVER.FIBER.LANG_LR = 1e-5


def _add_test_keys(cfg: CN) -> None:
    cfg.TEST.FIBER = CN()
    # Categories per prompt for large vocabularies (official LVIS: 40, i.e. 31 prompts);
    # -1 puts all categories in one prompt (an error if they do not fit).
    cfg.TEST.FIBER.CHUNK_SIZE = -1
