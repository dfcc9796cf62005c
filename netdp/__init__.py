"""netdp"""
