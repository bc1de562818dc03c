"""tapeline"""
