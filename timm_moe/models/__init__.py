from .resnet_blockmoe import MODEL_GRID, ResNetBlockMoE, dense_name, matched_inner_width

__all__ = ['MODEL_GRID', 'ResNetBlockMoE', 'dense_name', 'matched_inner_width']
