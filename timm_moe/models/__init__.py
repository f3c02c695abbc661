from .resnet_blockmoe import MODEL_GRID, ResNetBlockMoE, dense_name, matched_inner_width
