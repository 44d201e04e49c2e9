# Made by the build (setup.py): stoa_pb2.py, stoa_pb2.pyi, stoa_pb2_grpc.py.
