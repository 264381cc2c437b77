"""m2u.training"""
