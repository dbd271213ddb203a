"""pushjobs.server"""
