"""m2u.masking"""
