"""m2u.datasets"""
