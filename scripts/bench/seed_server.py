# The seed's Flask server (HTTP hands-on, /work/shared/seeds: server.py), its /sensor
# endpoint unchanged, as the baseline of the readings-path benchmark. The HTML page is
# left out: the benchmark only posts readings. Usage: python3 seed_server.py PORT
import sys

from flask import Flask, jsonify, request

app = Flask(__name__)
latest_suhu = None


# Endpoint API untuk client.py
@app.route("/sensor", methods=["POST"])
def receive_data():
    global latest_suhu
    data = request.json
    suhu = data.get("suhu")
    latest_suhu = suhu
    print(f"Data diterima: Suhu = {suhu} °C")
    return jsonify({"status": "success", "message": f"Suhu {suhu} diterima"}), 200


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
