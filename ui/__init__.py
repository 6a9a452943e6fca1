"""Streamlit helpers shared by the page scripts (pages/*.py, app.py): the settings guard, the admin
login state and the Admin forms built from the stages' parameter models. The top layer: may import
backend/, pipeline/ and core/; nothing imports it but the pages. (Not under pages/, where every
file would be a page.)"""
