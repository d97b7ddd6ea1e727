"""The reference: an empty FastAPI endpoint with a pydantic body, on the same uvicorn stack."""

import sys

import uvicorn
from fastapi import FastAPI

from teacher_service.wire import ProposeRequest

app = FastAPI()


@app.post("/empty")
def empty(body: ProposeRequest) -> dict:
    return {"ok": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
